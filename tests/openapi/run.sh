#!/usr/bin/env bash
# The API against openapi.yaml: schemathesis (property-based, from the spec alone) drives `jobctl dev`,
# which serves the same API code the deployed functions run. Every response must be one the spec
# documents (status, content type, headers, body schema), no request may cause a 5xx, invalid requests
# must be rejected and valid ones accepted, other methods must answer 405 with the right Allow, and a
# submitted job must be readable and cancellable through the links in the spec.
#
# Run by tests/openapi.rs (so `cargo test --workspace` includes it), or by hand:
#   bash tests/openapi/run.sh
# Environment: CARGO_TARGET_DIR (respected), OPENAPI_MAX_EXAMPLES (default 500 per operation and
# phase), OPENAPI_SEED (default 5). Needs python3 (3.10+) and network access to PyPI on the first run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

SCHEMATHESIS_VERSION=4.32.5
VENV="$ROOT/.venv/schemathesis"
ST="$VENV/bin/schemathesis"
if ! "$ST" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  echo "openapi: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# As `cargo test --workspace` builds it (run from the tests, only a link: one build, one target dir).
cargo build --workspace --all-targets
JOBCTL="$TARGET/debug/jobctl"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/jobkit-openapi.XXXXXX")"
LOG="$WORK/jobctl.log"
JOBCTL_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$JOBCTL_PID" ]] && kill -0 "$JOBCTL_PID" 2>/dev/null; then
    kill -INT "$JOBCTL_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$JOBCTL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$JOBCTL_PID" 2>/dev/null || true
    wait "$JOBCTL_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -s "$LOG" ]]; then
    echo "openapi: last lines of the jobctl dev log ($LOG):" >&2
    tail -n 40 "$LOG" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Dev-mode identity from X-User-Id, if this jobctl has it (the run sends `X-User-Id: schemathesis`).
DEV_ARGS=(--addr 127.0.0.1:0)
if "$JOBCTL" dev --help | grep -q -- '--user-header'; then
  DEV_ARGS+=(--user-header)
else
  echo "openapi: warning: this jobctl dev has no --user-header; every request runs as user 'local'" >&2
fi
# Port 0: the OS picks a free port and jobctl reports the address it bound, so no two runs can race
# for a port. RUST_LOG keeps the log to warnings (one line per rejected request otherwise).
RUST_LOG="${RUST_LOG:-warn}" "$JOBCTL" dev "${DEV_ARGS[@]}" >"$LOG" 2>&1 &
JOBCTL_PID=$!

# Wait (30 s at most) until it has bound its address and answers HTTP.
URL=""
deadline=$((SECONDS + 30))
while :; do
  if ! kill -0 "$JOBCTL_PID" 2>/dev/null; then
    echo "openapi: jobctl dev exited before it answered" >&2
    exit 1
  fi
  if [[ -z "$URL" ]]; then
    URL="$(grep -o 'API on http://127\.0\.0\.1:[0-9]*' "$LOG" | head -n 1 | sed 's/^API on //')" || true
  fi
  if [[ -n "$URL" ]] && "$VENV/bin/python" - "$URL" <<'EOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/jobs", timeout=2)
except urllib.error.HTTPError:
    pass  # it answered
except Exception:
    sys.exit(1)
EOF
  then
    break
  fi
  if ((SECONDS >= deadline)); then
    echo "openapi: jobctl dev did not answer within 30 s" >&2
    exit 1
  fi
  sleep 0.2
done
echo "openapi: jobctl dev answers at $URL" >&2

# The checks: every response documented (status, content type, headers, schema), no 5xx, invalid data
# rejected, valid data accepted, required headers enforced, undocumented methods answer 405 with a
# correct Allow, and a created job is readable. Not use_after_free (DELETE cancels a job: it stays
# readable, by design), ignored_auth (jobctl dev plays the authorizer, so no request lacks an identity)
# or object_level_authorization (needs several identities: tests/api.rs covers isolation).
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance
CHECKS+=,response_schema_conformance,negative_data_rejection,positive_data_acceptance
CHECKS+=,missing_required_header,unsupported_method,allow_header_conformance,ensure_resource_availability

mkdir -p "$TARGET/schemathesis"
export HYPOTHESIS_STORAGE_DIRECTORY="$TARGET/schemathesis/hypothesis"
status=0
# The hooks read the kinds' input schemas from `GET /kinds` there.
export JOBKIT_OPENAPI_URL="$URL"
"$ST" --config-file tests/openapi/schemathesis.toml --no-color run openapi.yaml \
  --url "$URL" \
  --header 'X-User-Id: schemathesis' \
  --checks "$CHECKS" \
  --max-examples "${OPENAPI_MAX_EXAMPLES:-500}" \
  --seed "${OPENAPI_SEED:-5}" \
  --report junit --report-junit-path "$TARGET/schemathesis/junit.xml" || status=$?

if ! kill -0 "$JOBCTL_PID" 2>/dev/null; then
  echo "openapi: jobctl dev died during the run" >&2
  exit 1
fi
exit "$status"
