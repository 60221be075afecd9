#!/usr/bin/env python3
"""Dispatcher: build a task mix (reproducible with --seed) and enqueue it on q:pending for the central scheduler.

Modes: default = everything at once; --pending with --pending-mode pulse|fifo; --drip. --wait follows the run to
its end and prints done / failed / makespan (exit 1 when a task failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit import dispatch, paths  # noqa: E402
from tracekit.errors import UserError, run_cli  # noqa: E402
from tracekit.redis_conn import add_redis_args, connect_from_args  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--inputs", required=True, type=Path,
                    help="folder of input videos, inside the inputs root ($TRACEKIT_INPUTS or inputs/)")
    ap.add_argument("--outputs", type=Path, default=None,
                    help="output folder inside the outputs root (default: the root, $TRACEKIT_OUTPUTS or outputs/); "
                         "files go to <outputs>/<RUN_ID>/<trace_id>_<profile>.mp4")
    ap.add_argument("--mix", default=dispatch.DEFAULT_MIX,
                    help=f'profile weights "p=w,..." (default "{dispatch.DEFAULT_MIX}"); counts proportional, '
                         "largest-remainder rounding")
    ap.add_argument("--total", type=int, default=None,
                    help="number of tasks (default: number of input files, or 10 for synthetic profiles)")
    ap.add_argument("--seed", type=int, default=None,
                    help="random seed for the sequence (same seed = same sequence; default: random, printed)")
    ap.add_argument("--pending", action="store_true", help="central mode: feed q:pending gradually (--pending-mode)")
    ap.add_argument("--pending-mode", choices=["pulse", "fifo"], default="pulse", help="pulse (default) or fifo")
    ap.add_argument("--pending-max", type=int, default=6, help="fifo: max length of q:pending (default 6)")
    ap.add_argument("--pulse-size", type=int, default=10, help="pulse: tasks per pulse (default 10)")
    ap.add_argument("--pulse-interval", type=float, default=300.0, help="pulse: seconds between pulses (default 300)")
    ap.add_argument("--drip", action="store_true",
                    help="push --batch-size tasks every --dribble-interval s while the backlog < --backlog-limit")
    ap.add_argument("--batch-size", type=int, default=1, help="fifo/drip: tasks per push (default 1)")
    ap.add_argument("--dribble-interval", type=float, default=1.0, help="fifo/drip: seconds between pushes (default 1)")
    ap.add_argument("--backlog-limit", type=int, default=1,
                    help="drip: push only while q:pending + q:<node> hold fewer tasks than this (default 1)")
    ap.add_argument("--wait", action="store_true", help="wait until every task finished, then print a summary")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.pending and args.drip:
        raise UserError("--pending and --drip are exclusive")
    for name in ("pending_max", "pulse_size", "batch_size", "backlog_limit"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.pulse_interval < 0 or args.dribble_interval < 0:
        raise UserError("intervals must be >= 0")
    run_id = paths.run_id(args.run_id)
    dispatch.parse_mix(args.mix or dispatch.DEFAULT_MIX)  # a bad --mix fails before Redis is touched
    client, keys = connect_from_args(args)
    the_plan = dispatch.plan(run_id, args.mix, args.total, args.seed, args.inputs, args.outputs,
                             alloc=lambda n: client.incrby(keys.seq, max(n, 1)) - max(n, 1) + 1)
    mode = "drip" if args.drip else (args.pending_mode if args.pending else "all")
    cfg = dispatch.FeedConfig(mode=mode, pulse_size=args.pulse_size, pulse_interval=args.pulse_interval,
                              pending_max=args.pending_max, batch_size=args.batch_size,
                              dribble_interval=args.dribble_interval, backlog_limit=args.backlog_limit)
    return dispatch.dispatch(client, keys, run_id, the_plan, cfg, args.wait, progress=not args.no_progress)


if __name__ == "__main__":
    run_cli(main, "dispatcher.py")
