# Sourced by the scripts: puts the project's own tools first on PATH.
# wasm-opt comes from npm's binaryen: Debian's older binaryen builds a bundle that never hydrates.
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"

# The browser bundle is compiled with a pinned nightly, the one toolchain that can rebuild the
# standard library for size (build-std) and leave out panic messages and Debug formatting:
# the WASM a page loads is about an eighth smaller. Everything else uses rust-toolchain.toml.
WASM_TOOLCHAIN=nightly-2026-05-20

# Runs a command with the nightly set up for the release WASM.
with_wasm_toolchain() {
  RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" \
  CARGO_UNSTABLE_BUILD_STD=std,panic_abort \
  CARGO_UNSTABLE_BUILD_STD_FEATURES=optimize_for_size \
  RUSTFLAGS="-Zfmt-debug=none -Zlocation-detail=none -Zunstable-options -Cpanic=immediate-abort" \
  "$@"
}
