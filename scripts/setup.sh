#!/usr/bin/env bash
# Installs what building and testing cairn needs, skipping whatever is already there.
# Safe to run again and again; both scripts/run.sh and scripts/test.sh call it.
#
# Needs: Debian/Ubuntu with rustup, Node.js and npm. Everything else comes from here:
#   - the Rust toolchain and wasm32 target pinned in rust-toolchain.toml, and the nightly
#     (with rust-src) that compiles the release WASM, pinned in scripts/env.sh
#   - cargo-leptos (pinned, --locked), wasm-bindgen-cli (= the version in Cargo.lock)
#   - wasm-opt, from the npm package binaryen pinned in package-lock.json
#   - Playwright, from package-lock.json, and Debian's chromium for the browser tests
#   - Debian's openssl command, for the HTTPS test
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.11
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^$toolchain"; then
  say "installing Rust $toolchain with the wasm32 target"
fi
# Idempotent and quick when present; also adds the components/target if one is missing.
rustup toolchain install "$toolchain" --profile minimal -c rustfmt,clippy -t wasm32-unknown-unknown >/dev/null

# The release WASM's toolchain (scripts/env.sh): a pinned nightly with the standard library's
# source, so that the bundle's std is compiled for size.
source scripts/env.sh
if ! rustup toolchain list | grep -q "^$WASM_TOOLCHAIN"; then
  say "installing Rust $WASM_TOOLCHAIN for the browser bundle"
fi
rustup toolchain install "$WASM_TOOLCHAIN" --profile minimal -c rust-src -t wasm32-unknown-unknown >/dev/null

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  say "installing cargo-leptos $CARGO_LEPTOS_VERSION (about 15 minutes on 2 cores, once)"
  cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked
fi

# cargo-leptos would download wasm-bindgen otherwise; its version must equal the crate's.
wbg=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if ! wasm-bindgen --version 2>/dev/null | grep -q "$wbg"; then
  say "installing wasm-bindgen-cli $wbg"
  # Not --locked: its lock file names a crate version the registry no longer has.
  cargo install wasm-bindgen-cli --version "$wbg"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (Playwright, binaryen's wasm-opt)"
  npm ci --no-audit --no-fund
fi

chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    say "installing Debian's chromium for the browser tests"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "note: no chromium at $chromium; the browser tests need it (apt-get install chromium," \
         "or set CHROMIUM_PATH)" >&2
  fi
fi

# The HTTPS test makes its certificates and serves them with the openssl command.
if ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's openssl for the HTTPS test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    say "installing Debian's openssl for the HTTPS test"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  else
    echo "note: no openssl command; the HTTPS test needs it (apt-get install openssl)" >&2
  fi
fi
