#!/usr/bin/env bash
# The official Python MCP client (PyPI `mcp`) in its own venv, for the test that connects it to
# `jobctl dev`'s `POST /mcp` (cli/tests/dev.rs, cli/tests/mcp/client.py).
#   infra/mcp.sh install   the venv; what .ci/run calls
#   infra/mcp.sh python    the venv (installed if missing); prints its python
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv/mcp"
CACHE="$ROOT/.cache"
MCP_VERSION="2.3.0"

venv() {
  mkdir -p "$CACHE"
  # Parallel test processes may all ask at once: one installs, the others wait for it.
  exec 9>"$CACHE/mcp-venv.lock"
  flock 9
  if ! "$VENV/bin/python" -c "import mcp, importlib.metadata as m; assert m.version('mcp') == '$MCP_VERSION'" 2>/dev/null; then
    echo "mcp: installing mcp $MCP_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "mcp==$MCP_VERSION" >&2
  fi
  exec 9>&-
}

case "${1:-}" in
  install) venv; echo "mcp: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))') in $VENV" ;;
  python) venv; echo "$VENV/bin/python" ;;
  *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
