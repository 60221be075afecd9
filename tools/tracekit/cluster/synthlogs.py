"""Synthetic RAW logs of any size, in exactly the raw formats of ``schema.py`` (for tests and benchmarks).

A small discrete simulation places tasks FIFO/first-fit on nodes with capacity, then writes per node
``events.jsonl``, ``samples.jsonl``, ``node.json``, ``worker.json`` and the controller's ``dispatch.jsonl``,
``placements.jsonl`` and ``controller/events.jsonl`` (release and requeue records). Node timestamps are written
in each node's own wall clock (controller time minus the node's clock offset), CPU as cumulative clock ticks (or
cgroup µs) exactly like the collector. ``generate`` returns the ground truth so tests can check the parser
against it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core import paths, schema
from tracekit.core.jsonl import dumps

PROFILES = (("fast1080p", 2), ("medium480p", 2), ("light1c", 1), ("hevc1080p", 4))
# The JSON text of one ``procs`` entry, its values by column name in ``schema.SAMPLE_COLUMNS`` order (a format
# string: values are given already as JSON text); a column this generator does not produce is null.
_MADE = {"pid", "starttime", "trace_id", "cpu_ticks", "rss_pages", "cg_cpu_us", "cg_mem_kb"}
_SAMPLE_ENTRY = "[" + ",".join("{" + n + "}" if n in _MADE else "null" for n in schema.SAMPLE_PROC_FIELDS) + "]"


@dataclass
class SynthSpec:
    """What to generate. Defaults give a small, clean two-node run."""

    nodes: int = 2
    tasks: int = 20
    cores: int = 4
    capacity: int = 4
    interval_ms: int = 200
    task_ms: tuple[int, int] = (600, 3000)
    arrival_ms: tuple[int, int] = (0, 400)  # gap between consecutive enqueues
    same_pids: bool = True  # every node uses the same PID sequence and boot time: (pid, starttime) repeat
    clock_offsets_ms: tuple[float, ...] = ()  # per node (controller - node); default 0
    clk_tck: int = 100
    page_size: int = 4096
    cpu_freq_mhz: float | None = 2100.0
    cgroup: bool = False  # samples carry cg_cpu_us and exec carries the cgroup total
    failed: int = 0  # tasks whose application exits 1 (they ran: samples exist)
    rejects: int = 0  # payloads the worker rejected (nothing ran)
    fenced: int = 0  # tasks run twice: attempt 1 fenced on one node, attempt 2 ok on another
    no_sample_tasks: int = 0  # tasks whose samples are dropped (collector missed them)
    malformed: bool = False  # a garbage line in the middle and a truncated last line in samples + events
    seed: int = 1
    t0_ms: float = 1_760_000_000_000.0
    progress: bool = False


@dataclass
class Truth:
    """Ground truth of a generated run."""

    run_dir: Path
    tasks: list[dict] = field(default_factory=list)  # every executed attempt, controller time base
    rejects: list[dict] = field(default_factory=list)
    samples: int = 0  # proc entries written (= "samples")
    ticks: int = 0
    bad_lines: int = 0


def _node_name(i: int) -> str:
    return f"node{i + 1:02d}"


def _simulate(spec: SynthSpec, rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """FIFO + first-fit over nodes; returns (dispatched tasks, executed attempts, placements)."""
    nodes = [_node_name(i) for i in range(spec.nodes)]
    running: dict[str, list[tuple[float, int]]] = {n: [] for n in nodes}
    dispatched, runs, placements = [], [], []
    t_enq = spec.t0_ms
    t = spec.t0_ms
    for i in range(spec.tasks):
        t_enq += rng.uniform(*spec.arrival_ms)
        prof, units = PROFILES[i % len(PROFILES)]
        units = min(units, spec.capacity)
        tid = f"tr{i:06d}"
        ts_enqueue = int(t_enq)
        dispatched.append({"seq": i + 1, "trace_id": tid, "profile": prof, "cpu_units": units,
                           "ts_enqueue": ts_enqueue, "input": f"in/{tid}.mp4", "output": f"out/{tid}.mp4"})
        t = max(t, float(ts_enqueue))
        attempts = [1, 2] if i < spec.fenced else [1]
        requeued = None
        for attempt in attempts:
            if attempt > 1:  # re-queued after attempt 1 was placed: the retry is submitted then
                t = max(t, runs[-1]["ts_dispatch"] + 1.0)
                requeued = int(t)
            while True:
                for n in nodes:
                    running[n] = [(e, u) for e, u in running[n] if e > t]
                # a fenced first attempt goes to another node than its retry
                cands = [n for n in nodes if spec.capacity - sum(u for _, u in running[n]) >= units]
                if attempt == 2 and len(nodes) > 1:
                    cands = [n for n in cands if n != runs[-1]["node_id"]] or []
                if cands:
                    node = cands[0]
                    break
                t = min(e for n in nodes for e, _ in running[n])
            dispatch = t + rng.uniform(0.5, 3.0)
            start = dispatch + rng.uniform(2.0, 20.0)
            dur = rng.uniform(*spec.task_ms)
            end = start + dur
            release = end + rng.uniform(0.5, 2.0)
            running[node].append((release, units))
            placements.append({"trace_id": tid, "attempt": attempt, "node": node, "ts": int(dispatch),
                               "weigher": "", "order": "min", "candidates": []})
            runs.append({"trace_id": tid, "attempt": attempt, "node_id": node, "profile": prof, "cpu_units": units,
                         "ts_enqueue": ts_enqueue, "ts_dispatch": int(dispatch), "start": start, "end": end,
                         "rate": units * rng.uniform(0.55, 0.98), "rss_kb": rng.randint(20_000, 400_000),
                         "fenced": attempt == 1 and attempt != attempts[-1], "release": int(release),
                         "requeued": requeued if attempt > 1 else None})
    return dispatched, runs, placements


def generate(run_dir: str | Path, spec: SynthSpec | None = None) -> Truth:
    """Write a synthetic run under ``run_dir`` (= ``logs/$RUN_ID``) and return its ground truth."""
    spec = spec or SynthSpec()
    rng = random.Random(spec.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    truth = Truth(run_dir)
    dispatched, runs, placements = _simulate(spec, rng)

    rejected = set()
    for k in range(spec.rejects):  # the last few dispatched tasks are rejected by the worker instead of running
        rejected.add(dispatched[-1 - k]["trace_id"])
    runs = [r for r in runs if r["trace_id"] not in rejected]
    ok_runs = [r for r in runs if not r["fenced"]]
    failed_ids = {(r["trace_id"], r["attempt"]) for r in ok_runs[: spec.failed]}
    no_sample = {(r["trace_id"], r["attempt"]) for r in ok_runs[spec.failed: spec.failed + spec.no_sample_tasks]}

    with open(paths_dispatch(run_dir), "w") as fh:
        for d in dispatched:
            fh.write(dumps(d) + "\n")
    with open(run_dir / paths.placements_path("_").name, "w") as fh:
        for p in placements:
            if p["trace_id"] not in rejected:
                fh.write(dumps(p) + "\n")

    # the controller's slot records: a release per accepted completion, a requeue per retry (Redis TIME ms)
    (run_dir / paths.CONTROLLER_DIR).mkdir(exist_ok=True)
    with open(run_dir / paths.CONTROLLER_DIR / "events.jsonl", "w") as fh:
        for r in runs:
            if r["requeued"] is not None:
                lost = next(x for x in runs if x["trace_id"] == r["trace_id"] and x["attempt"] == r["attempt"] - 1)
                fh.write(dumps({"kind": "requeue", "trace_id": r["trace_id"], "attempt": r["attempt"],
                                "node_id": lost["node_id"], "ts": r["requeued"], "bump": True,
                                "reason": f"node {lost['node_id']} lost (heartbeat expired)"}) + "\n")
            if not r["fenced"]:
                failed = (r["trace_id"], r["attempt"]) in failed_ids
                fh.write(dumps({"kind": "release", "trace_id": r["trace_id"], "attempt": r["attempt"],
                                "node_id": r["node_id"], "ts": r["release"],
                                "outcome": "failed" if failed else "done"}) + "\n")

    boot_ms = spec.t0_ms - 3_600_000.0
    for ni in range(spec.nodes):
        node = _node_name(ni)
        ndir = run_dir / node
        ndir.mkdir(parents=True, exist_ok=True)
        off = spec.clock_offsets_ms[ni] if ni < len(spec.clock_offsets_ms) else 0.0
        nboot = boot_ms if spec.same_pids else boot_ms - 777_000.0 * ni
        meta = {"node_id": node, "stage": "cloud", "hostname": node, "cpu_cores": spec.cores,
                "cpu_model": "Synthetic CPU", "cpu_freq_mhz": spec.cpu_freq_mhz, "mem_mb": 16384,
                "clk_tck": spec.clk_tck, "page_size": spec.page_size, "boot_time_ms": nboot,
                "clock": {"offset_ms": off, "rtt_ms": 0.4, "measured_at_ms": spec.t0_ms - off},
                "collector": {"mode": "proc", "interval_ms": spec.interval_ms, "started_ms": spec.t0_ms - off,
                              "stopped_ms": None, "cpu_s": 0.0, "ticks": 0, "samples": 0}}
        worker = {"node_id": node, "cpu_cores": spec.cores, "mem_mb": 16384, "capacity": spec.capacity,
                  "allocation_ratio": spec.capacity / spec.cores, "parallel": 0, "binding": "exclusive",
                  "cpuweight_per_vcpu": 100, "clock": meta["clock"], "started_ms": spec.t0_ms - off}
        nruns = sorted((r for r in runs if r["node_id"] == node), key=lambda r: r["start"])
        pid = 4000 if spec.same_pids else 4000 + 50_000 * ni
        events = []
        for k, r in enumerate(nruns):
            if spec.same_pids:  # identical nodes: the k-th task of every node gets the same (pid, starttime)
                r["pid"], r["starttime"] = pid + 3 * k, 360_000 + 137 * k
            else:
                pid += rng.randint(1, 9)
                r["pid"] = pid
                r["starttime"] = int((r["start"] - 1.0 - nboot) / 1000.0 * spec.clk_tck)
            r["cpu_ms"] = round(r["rate"] * (r["end"] - r["start"]), 3)
            r["cg_cpu_us"] = round(r["cpu_ms"] * 1000 + rng.randint(0, 900)) if spec.cgroup else None
            r["offset"] = off
            failed = (r["trace_id"], r["attempt"]) in failed_ids
            events.append({
                "kind": "exec", "trace_id": r["trace_id"], "attempt": r["attempt"], "node_id": node, "pid": r["pid"],
                "starttime": r["starttime"], "profile": r["profile"], "cpu_units": r["cpu_units"],
                "ts_enqueue": r["ts_enqueue"], "ts_dispatch": r["ts_dispatch"],
                "ts_start": round(r["start"] - off, 3), "ts_end": round(r["end"] - off, 3),
                "mono_start": round(r["start"] - spec.t0_ms + 5000.0, 3),
                "mono_end": round(r["end"] - spec.t0_ms + 5000.0, 3),
                "status": "failed" if failed else "ok", "exit_code": 1 if failed else 0, "signal": None,
                "cpu_ms": r["cpu_ms"], "utime_ms": round(r["cpu_ms"] * 0.9, 3),
                "stime_ms": round(r["cpu_ms"] - round(r["cpu_ms"] * 0.9, 3), 3), "max_rss_kb": r["rss_kb"],
                "cg_cpu_us": r["cg_cpu_us"], "cg_peak_kb": r["rss_kb"] + 1000 if spec.cgroup else None,
                "binding": "exclusive", "binding_mechanism": "affinity", "cpuset": "0-1", "cpu_weight": None,
                "cpu_quota_pct": None, "input": f"in/{r['trace_id']}.mp4", "output": f"out/{r['trace_id']}.mp4",
                "bytes_in": 1_000_000, "bytes_out": 0 if failed else 400_000,
                "error": "ffmpeg exited 1: Invalid data found" if failed else None, "argv": ["ffmpeg", "-i", "x"]})
            if r["fenced"]:
                events.append({"kind": "fenced", "trace_id": r["trace_id"], "attempt": r["attempt"], "node_id": node,
                               "ts": round(r["end"] - off + 3.0, 3), "reason": "task recovered meanwhile"})
            truth.tasks.append({**r, "status": "failed" if failed else ("fenced" if r["fenced"] else "ok"),
                                "has_samples": (r["trace_id"], r["attempt"]) not in no_sample})
        for k, d in enumerate(d for d in dispatched if d["trace_id"] in rejected):
            if k % spec.nodes == ni:  # each rejected payload is recorded by exactly one node
                ev = {"kind": "reject", "trace_id": d["trace_id"], "attempt": 1, "node_id": node,
                      "profile": d["profile"], "ts": round(d["ts_enqueue"] + 50.0 - off, 3),
                      "reason": "input not inside the inputs root", "payload_excerpt": "{...}"}
                events.append(ev)
                truth.rejects.append(ev)
        with open(ndir / "events.jsonl", "w") as fh:
            for k, ev in enumerate(events):
                fh.write(dumps(ev) + "\n")
                if spec.malformed and k == len(events) // 2:
                    fh.write('{"kind": "exec", "trace_id": \n')
                    truth.bad_lines += 1
        (ndir / "node.json").write_text(json.dumps(meta, indent=1))
        (ndir / "worker.json").write_text(json.dumps(worker, indent=1))
        _write_samples(ndir / "samples.jsonl", spec, nruns, no_sample, off, truth)
    return truth


def paths_dispatch(run_dir: Path) -> Path:
    """``dispatch.jsonl`` of the run (same file name as ``paths.dispatch_path``)."""
    return run_dir / paths.dispatch_path("_").name


def _write_samples(path: Path, spec: SynthSpec, nruns: list[dict], no_sample: set, off: float, truth: Truth) -> None:
    """Collector ticks on absolute deadlines over the node's busy span, cumulative counters per process."""
    if not nruns:
        path.write_text("")
        return
    first = min(r["start"] for r in nruns) - spec.interval_ms
    last = max(r["end"] for r in nruns) + spec.interval_ms
    n_ticks = int((last - first) / spec.interval_ms) + 1
    tick_ms = 1000.0 / spec.clk_tck
    pg = spec.page_size // 1024
    order = sorted(nruns, key=lambda r: r["start"])
    active: list[dict] = []
    nxt = 0
    bar = None
    if spec.progress:
        from tqdm import tqdm

        bar = tqdm(total=n_ticks, desc=f"synth {path.parent.name}", unit="tick", mininterval=1.0)
    buf: list[str] = []
    entry = _SAMPLE_ENTRY.format
    with open(path, "w") as fh:
        for k in range(n_ticks):
            t = first + k * spec.interval_ms
            while nxt < len(order) and order[nxt]["start"] - 1.0 <= t:
                active.append(order[nxt])
                nxt += 1
            active = [r for r in active if r["end"] > t]
            procs = []
            for r in active:
                if (r["trace_id"], r["attempt"]) in no_sample:
                    continue
                el = max(0.0, t - r["start"])
                cum_ms = min(r["cpu_ms"], r["rate"] * el)
                ticks = int(cum_ms / tick_ms)
                rss = int(r["rss_kb"] * min(1.0, 0.3 + el / 2000.0)) // pg
                cg = int(cum_ms * 1000) if spec.cgroup else None
                procs.append(entry(pid=r["pid"], starttime=r["starttime"], trace_id=f'"{r["trace_id"]}"',
                                   cpu_ticks=ticks, rss_pages=rss, cg_cpu_us="null" if cg is None else cg,
                                   cg_mem_kb="null" if cg is None else rss * pg))
            truth.ticks += 1
            truth.samples += len(procs)
            buf.append(f'{{"ts":{t - off:.3f},"mono":{t - spec.t0_ms + 5000.0:.3f},"procs":[{",".join(procs)}]}}\n')
            if spec.malformed and k == n_ticks // 2:
                buf.append('{"ts": 12, "mono": 3, "procs": [[1,2,\n')
                truth.bad_lines += 1
            if len(buf) >= 4096:
                fh.write("".join(buf))
                buf.clear()
                if bar is not None:
                    bar.update(4096)
        if spec.malformed:
            buf.append('{"ts": 1, "mono": 1, "pro')  # truncated last line (node died mid-write)
            truth.bad_lines += 1
        fh.write("".join(buf))
    if bar is not None:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    """``python3 -m tracekit.cluster.synthlogs --out logs/synth1 --samples 1000000``: write a synthetic run folder."""
    import argparse

    from tracekit.core.errors import UsageError

    ap = argparse.ArgumentParser(prog="python3 -m tracekit.cluster.synthlogs",
                                 description="Write synthetic raw logs (exact raw formats) of any size into a run "
                                             "folder, then try: tools/parse_cts.py --input OUT")
    ap.add_argument("--out", required=True, help="run folder to create (e.g. logs/synth1)")
    ap.add_argument("--samples", type=int, default=100_000, help="about this many process samples [100000]")
    ap.add_argument("--nodes", type=int, default=2, help="nodes [2]")
    ap.add_argument("--interval-ms", type=int, default=100, help="collector interval [100]")
    ap.add_argument("--malformed", action="store_true", help="add malformed and truncated lines")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.samples < 1 or a.nodes < 1 or a.interval_ms < 1:
        raise UsageError("--samples, --nodes and --interval-ms must be >= 1")
    per_task = 10_000 // a.interval_ms  # task_ms 5-15 s -> ~10 s of samples per task
    spec = SynthSpec(nodes=a.nodes, tasks=max(1, a.samples // max(1, per_task)), interval_ms=a.interval_ms,
                     task_ms=(5_000, 15_000), arrival_ms=(0, 50), malformed=a.malformed, seed=a.seed,
                     progress=True)
    truth = generate(a.out, spec)
    print(f"{a.out}: {len(truth.tasks)} task(s), {truth.samples} sample(s), {truth.bad_lines} bad line(s)")
    return 0


if __name__ == "__main__":
    from tracekit.core.cli import run_cli

    run_cli(main, "tracekit.cluster.synthlogs")
