#!/usr/bin/env bash
# Builds the release: the server binary and the browser bundle under target/site.
# The bundle is split per page (--split) and precompressed (.br and .gz beside each file).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# The browser half with the nightly (see env.sh), then the server with the pinned stable.
with_wasm_toolchain cargo leptos build --release --split --precompress --frontend-only
cargo leptos build --release --split --precompress --server-only
# cargo-leptos gzips at a low level; -9 makes the .gz a seventh smaller for the browsers that
# do not take brotli (the server sends whichever of .br, .gz or the plain file fits).
find target/site/pkg -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.css' \) -exec gzip -9 -k -f {} +
