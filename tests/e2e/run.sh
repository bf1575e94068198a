#!/usr/bin/env bash
# End to end with the real binaries: build the functions, make sure the emulator runs,
# deploy template.yaml through its CloudFormation and drive the stack through its API endpoint.
# Run by tests/e2e.rs (so `cargo test --workspace` includes it), or by hand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# The workspace's dev build with every target, as `cargo test --workspace` builds it: run from the
# tests, this only links what that build compiled (one build, one target directory, on CI's disk).
cargo build --workspace --all-targets
bash infra/emulator.sh install
bash infra/emulator.sh start
JOBKIT_E2E_BINARIES="$TARGET/debug" AWS_ENDPOINT_URL="${JOBKIT_TEST_ENDPOINT:-http://127.0.0.1:4566}" \
  .venv/ministack/bin/python tests/e2e/e2e.py
