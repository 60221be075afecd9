#!/usr/bin/env python3
"""Admin: `clean` deletes the run's control-plane keys (queues, capacity, registry) for a fresh run;
`stop-node` stops this node's worker and collector for RUN_ID via their pidfiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit import admin, paths  # noqa: E402
from tracekit.errors import run_cli  # noqa: E402
from tracekit.redis_conn import add_redis_args, connect_from_args  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clean", help="delete every control-plane key of --key-prefix (SCAN, never KEYS)")
    add_redis_args(c)
    c.add_argument("--force", action="store_true", help="even when workers or a scheduler are alive")
    s = sub.add_parser("stop-node", help="SIGTERM this node's worker (waits for running tasks) and collector")
    s.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    s.add_argument("--node-id", default=None, help="node id (default: $NODE_ID or the hostname)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for them to exit (default 60)")
    s.add_argument("--now", action="store_true", help="also stop the running tasks (second signal)")
    args = ap.parse_args()
    if args.cmd == "clean":
        client, keys = connect_from_args(args)
        return admin.clean(client, keys, args.force)
    return admin.stop_node(paths.run_id(args.run_id), paths.node_id(args.node_id), args.timeout, args.now)


if __name__ == "__main__":
    run_cli(main, "admin.py")
