#!/usr/bin/env python3
"""Worker: registers this node (capacity, slots, binding) with a heartbeat, takes placed tasks from q:<node>
atomically and runs each through the adapter with its CPU binding. Recovers its own keys when restarted.

Signals: the first SIGINT/SIGTERM stops taking tasks and waits for the running ones; a second one is forwarded
to them. Redis outages are retried with backoff.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit import paths  # noqa: E402
from tracekit.errors import UserError, run_cli  # noqa: E402
from tracekit.redis_conn import add_redis_args, connect_from_args  # noqa: E402
from tracekit.worker import Worker, WorkerConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--outputs", type=Path, default=None,
                    help="outputs root: task outputs must lie inside it (default: $TRACEKIT_OUTPUTS or outputs/)")
    ap.add_argument("--parallel", type=int, default=0,
                    help="> 0: register that many slot tokens (max concurrent tasks); 0 = cap-only (default)")
    ap.add_argument("--allocation-ratio", type=float, default=1.0,
                    help="capacity = floor(ratio x logical cores) unless --capacity-units (default 1.0)")
    ap.add_argument("--capacity-units", type=int, default=0, help="explicit capacity units (default 0 = use ratio)")
    ap.add_argument("--cpu-binding", choices=["exclusive", "shared"], default="exclusive",
                    help="exclusive: own cpuset of cpu_units cores per task (default); shared: CPU weight")
    ap.add_argument("--cpuweight-per-vcpu", type=int, default=100,
                    help="shared: CPU weight = this x cpu_units (default 100)")
    ap.add_argument("--reset-capacity", action="store_true",
                    help="also send tasks already placed on this node back to q:pending, so cap = capacity")
    ap.add_argument("--clear-queue", action="store_true",
                    help="record tasks already placed on this node as failed ('cleared') instead of keeping them")
    ap.add_argument("--slots-key", default=None,
                    help="slot token list (only the default slots:available under --key-prefix is supported)")
    ap.add_argument("--heartbeat-ttl", type=float, default=3.0,
                    help="seconds the heartbeat lives without refresh (default 3; refreshed every 1 s)")
    ap.add_argument("--node-id", default=None, help="node id (default: $NODE_ID or the hostname)")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--exit-when-idle", action="store_true",
                    help="leave the pool and exit once nothing was placed here for 2 s (scripted runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    if args.parallel < 0 or args.capacity_units < 0 or args.cpuweight_per_vcpu < 1:
        raise UserError("--parallel and --capacity-units must be >= 0, --cpuweight-per-vcpu >= 1")
    if args.heartbeat_ttl < 1.5:
        raise UserError("--heartbeat-ttl must be >= 1.5 s (it is refreshed every second)")
    client, keys = connect_from_args(args)
    if args.slots_key not in (None, keys.slots):
        raise UserError(f"--slots-key {args.slots_key!r}: only {keys.slots!r} is supported; "
                        "use --key-prefix to separate runs")
    outputs = (args.outputs or paths.outputs_root()).resolve()
    cfg = WorkerConfig(run_id=paths.run_id(args.run_id), node=paths.node_id(args.node_id), outputs=outputs,
                       parallel=args.parallel, allocation_ratio=args.allocation_ratio,
                       capacity_units=args.capacity_units, cpu_binding=args.cpu_binding,
                       cpuweight_per_vcpu=args.cpuweight_per_vcpu, reset_capacity=args.reset_capacity,
                       clear_queue=args.clear_queue, heartbeat_ttl_ms=int(args.heartbeat_ttl * 1000),
                       exit_when_idle=args.exit_when_idle)
    return Worker(client, keys, cfg).run()


if __name__ == "__main__":
    run_cli(main, "worker.py")
