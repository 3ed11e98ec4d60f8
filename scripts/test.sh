#!/usr/bin/env bash
# Tests everything: formatting, lints, unit and integration tests (real server, real SQLite
# files and a real Postgres, started here if it is not running), then the Playwright suite in Chromium against the release build,
# then a fuzz run of the JSON API from its OpenAPI document.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "clippy on the browser half (wasm32, hydrate)"
cargo clippy -p app --features hydrate --target wasm32-unknown-unknown --locked -- -D warnings
say "cargo test (needs PostgreSQL on 127.0.0.1:5432)"
scripts/postgres.sh
cargo test --workspace --locked
say "release build"
scripts/build.sh
say "end-to-end tests (Playwright, Chromium)"
(cd end2end && npx playwright test)
say "fuzzing the JSON API from its OpenAPI document (schemathesis)"
scripts/fuzz.sh
