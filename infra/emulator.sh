#!/usr/bin/env bash
# The local AWS emulator (ministack, from PyPI) on 127.0.0.1 only.
#   infra/emulator.sh install|start|stop|status|reset
# start reuses an emulator (ministack or LocalStack) already answering on the port; otherwise it installs
# ministack into .venv/ministack (its own venv: it pins botocore exactly) and starts it in the background.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${GATEWAY_PORT:-4566}"
URL="http://127.0.0.1:${PORT}"
VENV="$ROOT/.venv/ministack"
CACHE="$ROOT/.cache"
PIDFILE="$CACHE/ministack-${PORT}.pid"
LOG="$CACHE/ministack-${PORT}.log"
MINISTACK_VERSION="1.5.33"

healthy() {
  curl -fsS -o /dev/null --max-time 2 "$URL/_ministack/health" 2>/dev/null ||
    curl -fsS -o /dev/null --max-time 2 "$URL/_localstack/health" 2>/dev/null
}

# ministack, the SAM translator (CloudFormation with `Transform: AWS::Serverless`) and cryptography (its
# API Gateway verifies JWTs with it), plus boto3 for the end-to-end driver, in their own venv.
install() {
  if ! "$VENV/bin/python" -c 'import ministack, samtranslator, cryptography' 2>/dev/null; then
    echo "emulator: installing ministack $MINISTACK_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "ministack==$MINISTACK_VERSION" \
      aws-sam-translator 'cryptography>=44'
  fi
}

start() {
  mkdir -p "$CACHE"
  # Parallel test processes may all ask at once: one starts it, the others wait for it.
  exec 9>"$CACHE/emulator-${PORT}.lock"
  flock 9
  if healthy; then
    echo "emulator: reusing the one answering at $URL"
    return 0
  fi
  install
  echo "emulator: starting ministack on $URL (log: $LOG)"
  # AWS_ENDPOINT_URL is handed to the Lambda processes ministack runs, so their SDK calls stay local.
  BIND_HOST=127.0.0.1 GATEWAY_PORT="$PORT" AWS_ENDPOINT_URL="$URL" \
    setsid nohup "$VENV/bin/ministack" >"$LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + 90))
  until healthy; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "emulator: ministack did not come up; last log lines:" >&2
      tail -n 30 "$LOG" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  echo "emulator: ready at $URL"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "emulator: stopped"
  else
    echo "emulator: not started by this script"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo "emulator: running at $URL"; else echo "emulator: not running"; exit 1; fi ;;
  reset) curl -fsS -X POST "$URL/_ministack/reset" && echo ;;
  *) echo "usage: $0 install|start|stop|status|reset" >&2; exit 2 ;;
esac
