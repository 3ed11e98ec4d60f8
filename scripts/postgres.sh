#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests (each creates a
# database of its own there and drops it). Starts the local cluster if it is stopped, and
# installs Debian's PostgreSQL if there is none. Point CAIRN_TEST_POSTGRES at another server
# (postgres://USER@HOST:PORT/postgres, allowed to CREATE DATABASE) to use that instead.
set -euo pipefail
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ -n "${CAIRN_TEST_POSTGRES:-}" ]; then
  exit 0
fi
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
ready && exit 0

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else echo "error: PostgreSQL is not running on 127.0.0.1:5432 and this user cannot start it;" \
            "start it, or set CAIRN_TEST_POSTGRES" >&2; exit 1
  fi
}

installed=
if ! command -v pg_lsclusters >/dev/null; then
  say "installing Debian's PostgreSQL for the tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  installed=1
fi
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  echo "error: PostgreSQL is installed but has no cluster (pg_createcluster 15 main)" >&2
  exit 1
fi
if [ -n "$installed" ]; then
  # Debian's new cluster asks for a password over TCP; the tests connect as `postgres` from
  # 127.0.0.1 without one, as on the machines this runs on. Only a cluster this script has
  # just installed is changed, never one someone set up.
  # shellcheck disable=SC2086
  hba=$(pg_conftool $cluster show -s hba_file | tr -d "'")
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
fi
say "starting PostgreSQL ($cluster)"
# shellcheck disable=SC2086
as_root pg_ctlcluster $cluster start || true
for _ in $(seq 1 60); do
  ready && break
  sleep 0.5
done
ready || { echo "error: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
# Installing it may have started it before its pg_hba.conf changed above.
# shellcheck disable=SC2086
[ -z "$installed" ] || as_root pg_ctlcluster $cluster reload
# The tests connect as `postgres` without a password, as on this kind of machine (trust auth
# for local TCP). Say so plainly if this server wants one.
connects() { psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; }
for _ in $(seq 1 20); do  # a reload is taken in a moment after it returns
  connects && break
  [ -n "$installed" ] || break
  sleep 0.25
done
if ! connects; then
  echo "error: cannot connect as postgres@127.0.0.1 without a password; allow trust for" \
       "127.0.0.1 in pg_hba.conf, or set CAIRN_TEST_POSTGRES" >&2
  exit 1
fi
