#!/usr/bin/env python3
"""Control-plane status: per node cap / cap_total / run_count / alive, queue lengths, the head task and why it
waits, done and failed counts. --watch refreshes it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit import status  # noqa: E402
from tracekit.errors import UserError, run_cli  # noqa: E402
from tracekit.redis_conn import add_redis_args, connect_from_args  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_redis_args(ap)
    ap.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    ap.add_argument("--interval", type=float, default=2.0, help="--watch refresh period in seconds (default 2)")
    ap.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    args = ap.parse_args()
    if args.interval <= 0:
        raise UserError("--interval must be > 0")
    client, keys = connect_from_args(args)
    return status.show(client, keys, args.watch, args.interval, args.json)


if __name__ == "__main__":
    run_cli(main, "status.py")
