#!/usr/bin/env bash
# jobkit vs the Powertools peer, end to end: build, emulator, counting proxy, rounds, BENCHMARKS.md.
#   bash bench/run.sh [--short] [--rounds N] [--jobs N] [--users N] [--cap N] [--check] [--max-wru X] [--max-sqs X]
#                     [--baseline REV] [--busy N,N,...]
#   bash bench/run.sh --short --wait N   (only the waiting workloads: see bench/wait.py)
#   bash bench/run.sh --short --sweep N [--baseline-bin-dir DIR]   (only the sweep's cost: see bench/sweep.py)
#   bash bench/run.sh --fairness [--a-jobs N] [--b-jobs N] [--job-ms MS] [--concurrency N] [--backends embedded,emulator]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EMULATOR_PORT="${BENCH_EMULATOR_PORT:-4610}"
PROXY_PORT="${BENCH_PROXY_PORT:-4611}"
TARGET="$ROOT/target/bench"  # cargo puts the built-in bench profile's binaries in $TARGET/release

venv() { # venv DIR REQUIREMENTS
  if ! cmp -s "$2" "$1/.requirements" 2>/dev/null; then
    python3 -m venv "$1"
    "$1/bin/pip" install -q --disable-pip-version-check -r "$2"
    cp "$2" "$1/.requirements"
  fi
}
venv "$ROOT/.venv/bench" bench/requirements.txt
venv "$ROOT/.venv/bench-peer" bench/peer/requirements.txt

# --fairness: a mode of its own (bench/fairness.py): one owner's backlog and another owner's queue wait,
# through `jobctl dev` on its embedded backend and on the emulator. It prints its table; no functions, no proxy.
if [[ " $* " == *" --fairness "* ]]; then
  echo "bench: building jobctl" >&2
  cargo build -q -p jobctl
  GATEWAY_PORT="$EMULATOR_PORT" bash infra/emulator.sh start >&2
  trap 'GATEWAY_PORT="$EMULATOR_PORT" bash infra/emulator.sh stop >&2 || true' EXIT
  "$ROOT/.venv/bench/bin/python" bench/fairness.py --jobctl "$ROOT/target/debug/jobctl" \
    --emulator-url "http://127.0.0.1:$EMULATOR_PORT" --command "bash bench/run.sh $*" "$@"
  exit
fi

# --short checks counts, which do not depend on the build: it takes the debug binaries of the default
# target (after `cargo test` a link-only no-op, and no second build on CI's disk). Timings want the
# optimised ones.
BINS=(-p jobkit-submit -p jobkit-worker -p jobkit-status)
[[ " $* " == *" --wait "* ]] && BINS+=(-p jobkit-sweep)  # the due task fires the timers
[[ " $* " == *" --sweep "* ]] && BINS+=(-p jobkit-sweep)
if [[ " $* " == *" --short "* ]]; then
  echo "bench: building the functions (dev profile: --short compares counts, not timings)" >&2
  cargo build -q "${BINS[@]}"
  BIN_DIR="$ROOT/target/debug"
else
  echo "bench: building the functions (profile bench)" >&2
  CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build -q --profile bench "${BINS[@]}"
  BIN_DIR="$TARGET/release"
fi

# --baseline REV: the same functions built from commit REV run as a third side, for the "did this change
# cost anything" question answered in one run. Its source is exported (git archive) and built in its own
# target directory: the binaries' names would collide in $TARGET.
DRIVER_ARGS=()
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  if [[ "${ARGS[$i]}" == "--baseline" ]]; then
    REV="${ARGS[$((i + 1))]:?--baseline needs a commit}"
    SRC="$ROOT/target/bench-baseline/src"
    COMMIT="$(git -C "$ROOT" rev-parse --verify "$REV^{commit}")"
    if [[ "$(cat "$SRC/.commit" 2>/dev/null)" != "$COMMIT" ]]; then  # a fresh export would rebuild it
      rm -rf "$SRC" && mkdir -p "$SRC"
      git -C "$ROOT" archive "$COMMIT" | tar -x -C "$SRC"
      echo "$COMMIT" > "$SRC/.commit"
    fi
    echo "bench: building the functions of $REV (profile bench)" >&2
    (cd "$SRC" && CARGO_TARGET_DIR="$ROOT/target/bench-baseline" nice -n 10 cargo build -q --profile bench "${BINS[@]}")
    DRIVER_ARGS+=(--baseline-bin-dir "$ROOT/target/bench-baseline/release")
  fi
done

GATEWAY_PORT="$EMULATOR_PORT" bash infra/emulator.sh start >&2
"$ROOT/.venv/bench/bin/python" bench/proxy.py --port "$PROXY_PORT" --upstream "http://127.0.0.1:$EMULATOR_PORT" &
PROXY_PID=$!
cleanup() {
  kill "$PROXY_PID" 2>/dev/null || true
  GATEWAY_PORT="$EMULATOR_PORT" bash infra/emulator.sh stop >&2 || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/_bench/stats" 2>/dev/null && break; sleep 0.1; done

"$ROOT/.venv/bench/bin/python" bench/driver.py \
  --bin-dir "$BIN_DIR" --peer-python "$ROOT/.venv/bench-peer/bin/python" \
  --proxy-url "http://127.0.0.1:$PROXY_PORT" --emulator-url "http://127.0.0.1:$EMULATOR_PORT" \
  --command "bash bench/run.sh${*:+ $*}" "${DRIVER_ARGS[@]}" "$@"
