#!/usr/bin/env python3
"""Central scheduler: strict FIFO on the head of q:pending, first-fit (or a weigher) over alive feasible nodes.

Each placement is one atomic Lua step; one JSON line per placement goes to logs/$RUN_ID/placements.jsonl.
Dead workers (heartbeat expired) are recovered: their tasks go back to the head of q:pending.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit import central, paths  # noqa: E402
from tracekit.errors import run_cli  # noqa: E402
from tracekit.redis_conn import add_redis_args, connect_from_args  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--weigher", default="", choices=["", "instances", "vcpu"],
                    help='"" = first-fit in node_id order (default); instances = run_count/cap_total; '
                         "vcpu = (cap_total-cap)/cap_total")
    ap.add_argument("--weigher-order", default="min", choices=["min", "max"],
                    help="prefer the smallest (min, default) or largest (max) weigher value; ties: node_id order")
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="attempts per task before a task of a lost node is recorded failed (default 3)")
    ap.add_argument("--batch", type=int, default=256, help="max placements per atomic Lua call (default 256)")
    ap.add_argument("--reap-interval", type=float, default=1.0,
                    help="seconds between checks for dead workers (default 1.0)")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--exit-when-idle", action="store_true",
                    help="exit once q:pending is empty (for scripted runs and benchmarks)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler_central %(levelname)s %(message)s")
    client, keys = connect_from_args(args)
    cfg = central.SchedulerConfig(run_id=paths.run_id(args.run_id), weigher=args.weigher, order=args.weigher_order,
                                  max_attempts=args.max_attempts, batch=max(1, args.batch),
                                  reap_interval=max(0.1, args.reap_interval), exit_when_idle=args.exit_when_idle)
    return central.run(client, keys, cfg)


if __name__ == "__main__":
    run_cli(main, "scheduler_central.py")
