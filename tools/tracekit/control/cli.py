"""Command-line entry points of the control area (`tracekit-dispatch`, `tracekit-worker`, `tracekit-scheduler`,
`tracekit-status`, `tracekit-admin`).

Each parses its flags and calls one function of the area; the scripts under ``tools/`` and the
``[project.scripts]`` entry points both call these."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tracekit.control import admin, central, direct, dispatch, placement, status
from tracekit.control.service import request_stop
from tracekit.control.worker import Worker, WorkerConfig
from tracekit.core import paths
from tracekit.core.cli import command
from tracekit.core.errors import UsageError
from tracekit.core.keys import Keys
from tracekit.core.redis_conn import add_redis_args, connect_from_args

DISPATCHER_DOC = """Dispatcher: build a task mix (reproducible with --seed) and enqueue it on q:pending for the central
scheduler.

Modes: default = everything at once; --pending with --pending-mode pulse|fifo; --drip. --wait follows the run to
its end and prints done / failed / makespan (exit 1 when a task failed).

Direct mode (--policy and/or --nodes; the original Tracekit's default): no central scheduler, the dispatcher pushes
each task straight to q:<node> by a placement policy: rr3 (round-robin), duration-greedy / lpt-duration (longest
ffprobe duration first to the least-loaded node), duration-online (per push, shortest queue below --backlog-limit).
The workers of --nodes must be running. Without --mix: one legacy720p task per input (--scale/--preset/--crf).
"""


@command("dispatcher.py")
def dispatcher(argv: list[str] | None = None) -> int:
    """`tracekit-dispatch` / `tools/scheduler/dispatcher.py`."""
    ap = argparse.ArgumentParser(description=DISPATCHER_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--inputs", required=True, type=Path,
                    help="folder of input videos, inside the inputs root ($TRACEKIT_INPUTS or inputs/)")
    ap.add_argument("--outputs", type=Path, default=None,
                    help="output folder inside the outputs root (default: the root, $TRACEKIT_OUTPUTS or outputs/); "
                         "files go to <outputs>/<RUN_ID>/<trace_id>_<profile>.mp4")
    ap.add_argument("--mix", default=None,
                    help=f'profile weights "p=w,..." (default "{dispatch.DEFAULT_MIX}"; in direct mode or with '
                         "--scale/--preset/--crf: one legacy720p task per input); counts proportional, "
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
    ap.add_argument("--pulse-spacing", type=float, default=1.0,
                    help="pulse: seconds between the tasks of one pulse (default 1, the original's; 0 = the whole "
                         "pulse in one push with one ts_enqueue)")
    ap.add_argument("--drip", action="store_true",
                    help="push --batch-size tasks every --dribble-interval s while the backlog < --backlog-limit")
    ap.add_argument("--batch-size", type=int, default=1, help="fifo/drip: tasks per push (default 1)")
    ap.add_argument("--dribble-interval", type=float, default=1.0, help="fifo/drip: seconds between pushes (default 1)")
    ap.add_argument("--backlog-limit", type=int, default=1,
                    help="drip: push only while q:pending + q:<node> hold fewer tasks than this (default 1)")
    ap.add_argument("--scale", default=None, help="W:H of the per-input tasks made without --mix (default 1280:720)")
    ap.add_argument("--preset", default=None, help="x264 preset of the per-input tasks (default veryfast)")
    ap.add_argument("--crf", type=int, default=None, help="CRF of the per-input tasks (default 28)")
    ap.add_argument("--nodes", default=None,
                    help="direct mode: comma-separated nodes to push to (default with --policy: cloud0,cloud1,cloud2)")
    ap.add_argument("--policy", default=None, choices=direct.POLICIES,
                    help="direct mode placement: rr3 (default with --nodes), duration-greedy | lpt-duration, "
                         "duration-online | online-duration")
    ap.add_argument("--wait", action="store_true", help="wait until every task finished, then print a summary")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.pending and args.drip:
        raise UsageError("--pending and --drip are exclusive")
    is_direct = args.policy is not None or args.nodes is not None
    if is_direct and args.pending:
        raise UsageError("--pending feeds the central scheduler; --policy/--nodes push straight to q:<node>: "
                         "use one or the other")
    legacy = dispatch.legacy_params(args.scale, args.preset, args.crf)
    if legacy and args.mix is not None:
        raise UsageError("--scale/--preset/--crf set the per-input tasks made without --mix; with --mix each "
                         "profile sets them (add a profile in profiles.local.json)")
    if args.mix is None and args.total is not None and (is_direct or legacy):
        raise UsageError("--total needs --mix: without --mix there is one task per input file")
    if args.pulse_spacing < 0:
        raise UsageError("--pulse-spacing must be >= 0")
    for name in ("pending_max", "pulse_size", "batch_size", "backlog_limit"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.pulse_interval < 0 or args.dribble_interval < 0:
        raise UsageError("intervals must be >= 0")
    run_id = paths.run_id(args.run_id)
    per_file = args.mix is None and (is_direct or bool(legacy))
    dispatch.parse_mix(args.mix or dispatch.DEFAULT_MIX)  # a bad --mix fails before Redis is touched
    nodes = direct.parse_nodes(args.nodes or direct.DEFAULT_NODES) if is_direct else []
    client, keys = connect_from_args(args)
    if is_direct:
        direct.check_nodes(client, keys, nodes)  # before any trace id is handed out
    alloc = lambda n: client.incrby(keys.seq, max(n, 1)) - max(n, 1) + 1  # noqa: E731
    if per_file:
        the_plan = dispatch.per_file_plan(run_id, args.inputs, args.outputs, legacy, args.seed, alloc=alloc)
    else:
        the_plan = dispatch.plan(run_id, args.mix, args.total, args.seed, args.inputs, args.outputs, alloc=alloc)
    if is_direct:
        return direct.run(client, keys, run_id, the_plan, nodes, args.policy or "rr3", batch_size=args.batch_size,
                          backlog_limit=args.backlog_limit, interval=args.dribble_interval, drip=args.drip,
                          wait=args.wait, progress=not args.no_progress)
    mode = "drip" if args.drip else (args.pending_mode if args.pending else "all")
    cfg = dispatch.FeedConfig(mode=mode, pulse_size=args.pulse_size, pulse_interval=args.pulse_interval,
                              pulse_spacing=args.pulse_spacing, pending_max=args.pending_max,
                              batch_size=args.batch_size, dribble_interval=args.dribble_interval,
                              backlog_limit=args.backlog_limit)
    return dispatch.dispatch(client, keys, run_id, the_plan, cfg, args.wait, progress=not args.no_progress)


WORKER_DOC = """Worker: registers this node (capacity, slots, binding) with a heartbeat, takes placed tasks from
q:<node> atomically and runs each through the adapter with its CPU binding. Recovers its own keys when restarted.

Signals: the first SIGINT/SIGTERM stops taking tasks and waits for the running ones; a second one is forwarded
to them. Redis outages are retried with backoff.
"""


@command("worker.py")
def worker(argv: list[str] | None = None) -> int:
    """`tracekit-worker` / `tools/scheduler/worker.py`."""
    ap = argparse.ArgumentParser(description=WORKER_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    if args.parallel < 0 or args.capacity_units < 0 or args.cpuweight_per_vcpu < 1:
        raise UsageError("--parallel and --capacity-units must be >= 0, --cpuweight-per-vcpu >= 1")
    if args.heartbeat_ttl < 1.5:
        raise UsageError("--heartbeat-ttl must be >= 1.5 s (it is refreshed every second)")
    if args.slots_key not in (None, Keys().slots, Keys(args.key_prefix).slots):  # the default list, maybe prefixed
        raise UsageError(f"--slots-key {args.slots_key!r}: only {Keys(args.key_prefix).slots!r} is supported; "
                         "use --key-prefix to separate runs")
    client, keys = connect_from_args(args)
    outputs = (args.outputs or paths.outputs_root()).resolve()
    cfg = WorkerConfig(run_id=paths.run_id(args.run_id), node=paths.node_id(args.node_id), outputs=outputs,
                       parallel=args.parallel, allocation_ratio=args.allocation_ratio,
                       capacity_units=args.capacity_units, cpu_binding=args.cpu_binding,
                       cpuweight_per_vcpu=args.cpuweight_per_vcpu, reset_capacity=args.reset_capacity,
                       clear_queue=args.clear_queue, heartbeat_ttl_ms=int(args.heartbeat_ttl * 1000),
                       exit_when_idle=args.exit_when_idle)
    return Worker(client, keys, cfg).run()


SCHEDULER_CENTRAL_DOC = """Central scheduler: strict FIFO on the head of q:pending, first-fit (or a weigher) over alive
feasible nodes.

Each placement is one atomic Lua step; one JSON line per placement goes to logs/$RUN_ID/placements.jsonl.
Dead workers (heartbeat expired) are recovered: their tasks go back to the head of q:pending.
"""


@command("scheduler_central.py")
def scheduler_central(argv: list[str] | None = None) -> int:
    """`tracekit-scheduler` / `tools/scheduler/scheduler_central.py`."""
    ap = argparse.ArgumentParser(description=SCHEDULER_CENTRAL_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--weigher", default="", choices=placement.WEIGHERS,
                    help='"" = first-fit in node_id order (default); '
                         + "; ".join(f"{name} = {entry.help}" for name, entry in placement.WEIGHER_TABLE.items()))
    ap.add_argument("--weigher-order", default="min", choices=placement.ORDERS,
                    help="prefer the smallest (min, default) or largest (max) weigher value; ties: node_id order")
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="attempts per task before a task of a lost node is recorded failed (default 3)")
    ap.add_argument("--batch", type=int, default=256, help="max placements per atomic Lua call (default 256)")
    ap.add_argument("--reap-interval", type=float, default=1.0,
                    help="seconds between checks for dead workers (default 1.0)")
    ap.add_argument("--log-candidates", action="store_true",
                    help="placements.jsonl lists every feasible node of each placement (O(nodes) per placement: "
                         "debugging); by default a line holds the chosen node, its value, the runner-up and the "
                         "number of feasible nodes")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--exit-when-idle", action="store_true",
                    help="exit once q:pending is empty (for scripted runs and benchmarks)")
    ap.add_argument("--pending", default=None, help="pending list (original flag; only q:pending under --key-prefix)")
    ap.add_argument("--slots", default=None,
                    help="slot token list (original flag; only slots:available under --key-prefix)")
    ap.add_argument("--scan-slots", type=int, default=0,
                    help="original flag: 0 = consider every node with a free slot (the only behaviour: the "
                         "placement index sees every feasible node)")
    ap.add_argument("--scan-pending", type=int, default=1,
                    help="original flag: 1 = strict FIFO on the head of q:pending (the only behaviour)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler_central %(levelname)s %(message)s")
    if args.scan_slots != 0:
        raise UsageError(f"--scan-slots {args.scan_slots}: the scheduler always considers every feasible node "
                         "(placement index, no scan to limit): drop the flag")
    if args.scan_pending != 1:
        raise UsageError(f"--scan-pending {args.scan_pending}: placement is strict FIFO on the head of q:pending "
                         "(--scan-pending 1): drop the flag")
    named = Keys(args.key_prefix)
    # the original's default names mean the default lists (under --key-prefix, when one is given)
    for flag, given, key in (("--pending", args.pending, named.pending), ("--slots", args.slots, named.slots)):
        if given not in (None, key, Keys().pending if flag == "--pending" else Keys().slots):
            raise UsageError(f"{flag} {given!r}: only {key!r} is supported; use --key-prefix to separate runs")
    client, keys = connect_from_args(args)
    cfg = central.SchedulerConfig(run_id=paths.run_id(args.run_id), weigher=args.weigher, order=args.weigher_order,
                                  max_attempts=args.max_attempts, batch=max(1, args.batch),
                                  reap_interval=max(0.1, args.reap_interval), exit_when_idle=args.exit_when_idle,
                                  log_candidates=args.log_candidates)
    return central.run(client, keys, cfg)


STATUS_DOC = """Control-plane status: per node cap / cap_total / run_count / alive, queue lengths, the head task and
why it waits, done and failed counts. --watch refreshes it."""


@command("status.py")
def show_status(argv: list[str] | None = None) -> int:
    """`tracekit-status` / `tools/scheduler/status.py`."""
    ap = argparse.ArgumentParser(description=STATUS_DOC)
    add_redis_args(ap)
    ap.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    ap.add_argument("--interval", type=float, default=2.0, help="--watch refresh period in seconds (default 2)")
    ap.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    args = ap.parse_args(argv)
    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    client, keys = connect_from_args(args)
    return status.show(client, keys, args.watch, args.interval, args.json)


ADMIN_DOC = """Admin: `clean` deletes the run's control-plane keys (queues, capacity, registry) for a fresh run;
`stop-node` stops this node's worker and collector for RUN_ID via their pidfiles."""


@command("admin.py")
def administer(argv: list[str] | None = None) -> int:
    """`tracekit-admin` / `tools/scheduler/admin.py`."""
    ap = argparse.ArgumentParser(description=ADMIN_DOC)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clean", help="delete every control-plane key of --key-prefix (SCAN, never KEYS)")
    add_redis_args(c)
    c.add_argument("--force", action="store_true", help="even when workers or a scheduler are alive")
    s = sub.add_parser("stop-node", help="SIGTERM this node's worker (waits for running tasks) and collector")
    s.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    s.add_argument("--node-id", default=None, help="node id (default: $NODE_ID or the hostname)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for them to exit (default 60)")
    s.add_argument("--now", action="store_true", help="also stop the running tasks (second signal)")
    v = sub.add_parser("stop-service", help="ask the worker running service TRACE_ID to stop it (SIGTERM, then "
                                            "SIGKILL after its grace); docs/services.md")
    add_redis_args(v)
    v.add_argument("trace_id", help="the service task's trace_id")
    v.add_argument("--reason", default="admin", help="recorded as the stop reason (default: admin)")
    args = ap.parse_args(argv)
    if args.cmd == "clean":
        client, keys = connect_from_args(args)
        return admin.clean(client, keys, args.force)
    if args.cmd == "stop-service":
        client, keys = connect_from_args(args)
        return request_stop(client, keys, paths.check_id("trace_id", args.trace_id), args.reason)
    return admin.stop_node(paths.run_id(args.run_id), paths.node_id(args.node_id), args.timeout, args.now)


LOADGEN_DOC = """Load generator: drive HTTP requests at one service task and record one line per request
(docs/services.md).

The target is the address the worker published for the service (--service TRACE_ID, waits until it is ready), or
with --url a loopback address only. Open loop (--rate, --arrival constant|poisson, seeded) or closed loop
(--concurrency N); bounded by --count and/or --duration. Lines go to logs/RUN_ID/controller/requests/TRACE_ID.jsonl
(schema.REQUEST_RAW_FIELDS; times in the controller's clock, epoch ms with µs resolution) and a .meta.json beside.
"""


@command("loadgen.py")
def loadgen(argv: list[str] | None = None) -> int:
    """`tracekit-loadgen` / `tools/loadgen.py`."""
    from tracekit.control import loadgen as lg
    from tracekit.core.clock import redis_clock_offset

    ap = argparse.ArgumentParser(description=LOADGEN_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_args(ap)
    ap.add_argument("--service", metavar="TRACE_ID", help="the service task to drive (its published address)")
    ap.add_argument("--url", help="http://host:port: a loopback target without a service (benchmarks)")
    ap.add_argument("--run-id", default=None, help="run id (default: $RUN_ID or run_id.env)")
    ap.add_argument("--mix", help="request mix file: JSON Lines of {method, path, body, weight} (default: GET --path)")
    ap.add_argument("--path", default="/", help="the one path requested without --mix (default /)")
    ap.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    ap.add_argument("--arrival", choices=("constant", "poisson"), default="constant",
                    help="open loop arrivals (default constant)")
    ap.add_argument("--concurrency", type=int, default=None, help="closed loop: N clients, each waits for its reply")
    ap.add_argument("--duration", type=float, default=None, help="seconds to send for")
    ap.add_argument("--count", type=int, default=None, help="requests to send at most")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals and the mix draws")
    ap.add_argument("--procs", type=int, default=1, help="split the load over N processes (default 1)")
    ap.add_argument("--wait-ready", type=float, default=60.0, help="seconds to wait for the service (default 60)")
    ap.add_argument("--stop-after", action="store_true", help="stop the service when done (admin stop-service)")
    ap.add_argument("--output", type=Path, default=None, help="request lines file (default: see above)")
    a = ap.parse_args(argv)
    if (a.rate is None) == (a.concurrency is None):
        raise UsageError("give exactly one of --rate (open loop) and --concurrency (closed loop)")
    if (a.service is None) and (a.url is None):
        raise UsageError("give --service TRACE_ID (or --url with a loopback address)")
    if not 0 < a.timeout <= 600:
        raise UsageError("--timeout must be in (0, 600] s")
    mix = lg.read_mix_file(a.mix, a.path)
    client = keys = None
    offset = rtt = None
    if a.service is not None:
        tid = paths.check_id("trace_id", a.service)
        client, keys = connect_from_args(a)
        published = lg.wait_for_service(client, keys, tid, a.wait_ready)
        url = lg.check_target(a.url or published, published)
        off = redis_clock_offset(client)
        offset, rtt = off.offset_ms, off.rtt_ms
    else:
        tid = "local"
        url = lg.check_target(a.url, None)
    spec = lg.LoadSpec(url=url, trace_id=tid, mix=mix, mode="open" if a.rate is not None else "closed",
                       rate=a.rate or 0.0, arrival=a.arrival, concurrency=a.concurrency or 1,
                       duration_s=a.duration, count=a.count, timeout_s=a.timeout, seed=a.seed, procs=a.procs,
                       clock_offset_ms=offset or 0.0, clock_rtt_ms=rtt)
    try:
        lines, meta = lg.run_load(spec)
    finally:
        if a.stop_after and client is not None:
            request_stop(client, keys, tid, "loadgen finished")
    out = a.output or paths.requests_dir(paths.run_id(a.run_id)) / f"{tid}.jsonl"
    lg.write_requests(out, lines, meta)
    print(f"loadgen: {lg.summary(lines, meta)} -> {out}")
    return 0
