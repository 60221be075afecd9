#!/usr/bin/env bash
# Worker of a real Tracekit cluster: ffmpeg + Python dependencies, run_id.env, Redis reachable with the password file.
# Idempotent. All logic is in tools/tracekit/cluster/setup.py; this shell only installs what is missing.
# Usage: tools/setup_worker.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
for a in "$@"; do case "$a" in --no-install|-h|--help) install=0 ;; esac; done
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$install" = 1 ]; then
  missing=""
  for b in ffmpeg:ffmpeg ffprobe:ffmpeg pidstat:sysstat; do
    command -v "${b%%:*}" >/dev/null 2>&1 || missing="$missing ${b#*:}"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "setup_worker: error: missing Debian packages:$missing (run as root, or: sudo apt-get install -y$missing)" >&2
      exit 2
    fi
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
  fi
  # the package itself (editable) and its dependencies, in the project's .venv: the worker shims run there
  if ! .venv/bin/python -c "import tracekit, redis, hiredis, psutil" >/dev/null 2>&1; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  fi
  PY=.venv/bin/python
fi
PYTHONPATH="$PWD/tools${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m tracekit setup worker "$@"
