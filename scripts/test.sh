#!/usr/bin/env bash
# Runs every test: builds the workspace, the Rust unit/integration tests, then the end-to-end
# pytest suite against the freshly built `tern` binary (tests/e2e finds it at $TERN_BIN or target/debug/tern).
set -euo pipefail

cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo test --workspace

export TERN_BIN="${TERN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/tern}"
python3 -m pytest -q tests/e2e "$@"
