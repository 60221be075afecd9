#!/usr/bin/env bash
# The original Tracekit's path of this script (docs/migrating.md): it moved to tools/setup_controller.sh, run here as is.
exec "$(dirname "$0")/../setup_controller.sh" "$@"
