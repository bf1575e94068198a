#!/usr/bin/env bash
# End to end with the real binaries: build the three functions (release), make sure the emulator runs,
# deploy template.yaml through its CloudFormation and drive the stack through its API endpoint.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
cargo build --release --locked -p jobkit-submit -p jobkit-worker -p jobkit-status
bash infra/emulator.sh start
AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}" .venv/ministack/bin/python tests/e2e/e2e.py
