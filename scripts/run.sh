#!/usr/bin/env bash
# Builds the release and serves cairn on http://127.0.0.1:3000 with the embedded SQLite
# default (./cairn.db). Extra arguments go to `cairn serve` (e.g. --addr 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
scripts/build.sh
exec target/release/cairn serve "$@"
