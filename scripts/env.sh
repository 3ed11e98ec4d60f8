# Sourced by the scripts: puts the project's own tools first on PATH.
# wasm-opt comes from npm's binaryen: Debian's older binaryen builds a bundle that never hydrates.
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
