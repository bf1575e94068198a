#!/usr/bin/env bash
# End to end with the real binaries: build the functions (release), make sure the emulator runs,
# deploy template.yaml through its CloudFormation and drive the stack through its API endpoint.
# Run by tests/e2e.rs (so `cargo test --workspace` includes it), or by hand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --profile e2e -p jobkit-submit -p jobkit-worker -p jobkit-status -p jobkit-sweep -p jobkit-deliver -p jobkit-events
bash infra/emulator.sh install
bash infra/emulator.sh start
JOBKIT_E2E_BINARIES="$TARGET/e2e" AWS_ENDPOINT_URL="${JOBKIT_TEST_ENDPOINT:-http://127.0.0.1:4566}" \
  .venv/ministack/bin/python tests/e2e/e2e.py
