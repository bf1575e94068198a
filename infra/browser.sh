#!/usr/bin/env bash
# A real browser for the tests: Debian's chromium, driven by Playwright (PyPI) from its own venv.
#   infra/browser.sh install   chromium (apt-get, needs root) and the venv; what .ci/run calls
#   infra/browser.sh python    the venv (installed if missing) and a check that chromium is there;
#                              prints the venv's python. Fails, saying how to install, without chromium.
# Playwright's own browser download is never used (it cannot be fetched here, and CI would differ from a
# developer's machine): the scripts launch the system chromium by path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv/browser"
CACHE="$ROOT/.cache"
PLAYWRIGHT_VERSION="1.65.3"
CHROMIUM="${JOBKIT_CHROMIUM:-/usr/bin/chromium}"

venv() {
  mkdir -p "$CACHE"
  # Parallel test processes may all ask at once: one installs, the others wait for it.
  exec 9>"$CACHE/browser-venv.lock"
  flock 9
  if ! "$VENV/bin/python" -c 'import playwright' 2>/dev/null; then
    echo "browser: installing playwright $PLAYWRIGHT_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION" >&2
  fi
  exec 9>&-
}

chromium_present() {
  [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1
}

install() {
  if ! chromium_present; then
    echo "browser: installing chromium (apt-get)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  fi
  venv
  echo "browser: $("$CHROMIUM" --version 2>/dev/null), playwright in $VENV"
}

python() {
  if ! chromium_present; then
    echo "browser: no chromium at $CHROMIUM. Install it with \`bash infra/browser.sh install\`" \
      "(as root: apt-get update && apt-get install -y chromium), or set JOBKIT_CHROMIUM to a Chromium binary." >&2
    exit 1
  fi
  venv
  echo "$VENV/bin/python"
}

case "${1:-}" in
  install) install ;;
  python) python ;;
  *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
