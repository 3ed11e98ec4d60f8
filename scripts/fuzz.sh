#!/usr/bin/env bash
# Fuzzes the JSON API from its own OpenAPI document (/api/openapi.json) with schemathesis,
# pinned with everything it needs in scripts/fuzz-requirements.txt: whatever it sends, no
# answer may be a 5xx. Runs against the release binary (scripts/build.sh) with a fresh
# SQLite file and no write limit, so every request reaches its handler.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/fuzz-venv
if [ ! -x "$venv/bin/st" ] || [ scripts/fuzz-requirements.txt -nt "$venv/.installed" ]; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/fuzz-requirements.txt
  touch "$venv/.installed"
fi

dir=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
{ cat cairn.toml; printf '\n[http]\nwrites_per_second = 0\n'; } > "$dir/cairn.toml"
# With a token, as a team runs it: every request passes the token and workspace checks.
token=$(target/release/cairn token create --workspace fuzz --label schemathesis \
  --database-url "sqlite://$dir/fuzz.db" 2>/dev/null)
target/release/cairn serve --addr 127.0.0.1:0 --database-url "sqlite://$dir/fuzz.db" \
  --config "$dir/cairn.toml" --log warn,server=info > "$dir/server.log" 2>&1 &
server=$!
url=
for _ in $(seq 1 100); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$dir/server.log" | head -1 | sed 's/listening on //') || true
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the server did not start:" >&2
  cat "$dir/server.log" >&2
  exit 1
fi

# Streams never end by themselves, so they are left out; everything else is fuzzed.
"$venv/bin/st" run "$url/api/openapi.json" \
  --checks not_a_server_error \
  --header "Authorization: Bearer $token" \
  --exclude-path-regex '/events$' \
  --max-examples "${CAIRN_FUZZ_EXAMPLES:-100}" \
  --generation-deterministic \
  --request-timeout 10
if grep -q 'panicked' "$dir/server.log"; then
  echo "the server panicked during the fuzz run:" >&2
  grep -A5 'panicked' "$dir/server.log" >&2
  exit 1
fi
