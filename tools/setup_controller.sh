#!/usr/bin/env bash
# Controller of a real Tracekit cluster: redis-server with requirepass, bind, protected-mode, AOF, optional TLS.
# Idempotent: re-running keeps the password and restarts Redis only when its configuration changed.
# All logic is in tools/tracekit/cluster/setup.py; this shell only installs redis-server when missing.
# Usage: tools/setup_controller.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
for a in "$@"; do case "$a" in --no-install|--stop|-h|--help) install=0 ;; esac; done
if [ "$install" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup_controller: error: redis-server is missing: run as root, or: sudo apt-get install -y redis-server" >&2
    exit 2
  fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  # the package starts its own unauthenticated instance on 6379: ours replaces it
  { systemctl disable --now redis-server || service redis-server stop; } >/dev/null 2>&1 || true
fi
PYTHONPATH="$PWD/tools${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m tracekit setup controller "$@"
