"""Synthetic data in the original Tracekit's formats, raw and CTS (for the importer's tests).

Written from the formats as documented (docs/traces.md "Importing the original Tracekit's data"; field lists in
``trace.legacy``): per worker folder ``node_meta.json``, raw ``proc_metrics.jsonl`` (cumulative ``utime``/``stime``
ticks, ``rss_kb`` = pages x 4, one line per PID per tick), ``events.ffmpeg.jsonl`` (one adapter line per
execution, uuid4 trace ids), the merged ``events.jsonl`` and the ``CTS/`` folder the original's ``make parse``
made (invocations with five fields, per-PID differences whose first sample is 0/0, ``nodes.json`` rounded to
100 MHz and whole GiB, an ``audit_report.md``). ``generate`` returns the ground truth.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.trace.legacy import (
    ORIGINAL_ADAPTER_EVENTS,
    ORIGINAL_AUDIT,
    ORIGINAL_CTS_INVOCATIONS,
    ORIGINAL_CTS_NODES,
    ORIGINAL_CTS_PROC_METRICS,
    ORIGINAL_EVENT_FIELDS,
    ORIGINAL_INVOCATION_FIELDS,
    ORIGINAL_MERGED_EVENTS,
    ORIGINAL_NODE_META,
    ORIGINAL_PROC_METRIC_FIELDS,
    ORIGINAL_PROFILES,
    ORIGINAL_RAW_SAMPLE_FIELDS,
    ORIGINAL_RSS_KB_PER_PAGE,
)

_BY_NAME = {name: (scale, codec, preset, units) for (scale, codec, preset), (name, units) in ORIGINAL_PROFILES.items()}


@dataclass
class OriginalSpec:
    """What to generate. ``gathered``: ``<dir>/<node>/`` per worker (else one worker written into ``<dir>``)."""

    nodes: int = 2
    tasks: int = 8
    cores: int = 4
    interval_ms: int = 200
    clk_tck: int = 100
    cpu_freq_mhz: float = 2399.9  # per node; 0 = unknown (as the original wrote it)
    unknown_mhz_nodes: int = 0  # the last N nodes have cpu_freq_mhz 0
    same_pids: bool = True  # every worker's PIDs start at the same value: ids repeat across nodes
    reuse_pid: bool = False  # the second task of each node reuses the first one's PID
    gathered: bool = True
    raw: bool = True  # write raw logs (node_meta.json, proc_metrics.jsonl, events.ffmpeg.jsonl)
    merged: bool = True  # write the original parse's events.jsonl (needs raw)
    cts: bool = True  # write the original parse's CTS folder
    cts_dir: str = "CTS"
    failed: int = 0  # the first N executions of each node exit 1
    seed: int = 3
    t0_ms: int = 1_756_000_000_000


@dataclass
class OriginalTruth:
    """Ground truth: one dict per execution (node, pid, trace_id, profile, cpu_units, ts_*, cpu_ms, sampled_ms)."""

    root: Path
    node_dirs: list[Path] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)


def generate(root: str | Path, spec: OriginalSpec | None = None) -> OriginalTruth:
    """Write the original's files under ``root`` (module docstring)."""
    spec = spec or OriginalSpec()
    rng = random.Random(spec.seed)
    root = Path(root)
    truth = OriginalTruth(root)
    names = list(_BY_NAME)
    for ni in range(spec.nodes if spec.gathered else 1):
        node = f"cloud{ni + 1}"
        ndir = root / node if spec.gathered else root
        ndir.mkdir(parents=True, exist_ok=True)
        truth.node_dirs.append(ndir)
        mhz = 0 if ni >= spec.nodes - spec.unknown_mhz_nodes else spec.cpu_freq_mhz
        meta = {"run_id": root.name, "node": node, "stage": "cloud", "host": node, "iface": "ens3",
                "cpu_cores": spec.cores, "mem_mb": 15997, "cpu_model": "Intel Xeon (Synthetic)",
                "cpu_freq_mhz": int(mhz)}
        pid0 = 20_000 if spec.same_pids else 20_000 + 7_000 * ni
        t = spec.t0_ms + 500 * ni
        events, samples = [], []
        for k in range(spec.tasks):
            prof = names[(k + ni) % len(names)]
            scale, codec, preset, units = _BY_NAME[prof]
            pid = pid0 + (0 if spec.reuse_pid and k == 1 else 13 * k)
            enq = t
            start = t + rng.randint(5, 400)
            dur = rng.randint(1_200, 4_000)
            end = start + dur
            rate = units * rng.uniform(0.5, 0.95)  # cores busy
            ticks_per_ms = spec.clk_tck / 1000
            # the sampler ticks on its own grid; a PID is sampled while its sentinel exists (start..end)
            ts = start + rng.randint(1, spec.interval_ms)
            task_samples = []
            while ts < end:
                el = ts - start
                cum = int(rate * el * ticks_per_ms)
                ut = int(cum * 0.9)
                rss_kb = (rng.randint(30_000, 300_000) // ORIGINAL_RSS_KB_PER_PAGE) * ORIGINAL_RSS_KB_PER_PAGE
                task_samples.append({"ts_ms": ts, "pid": pid, "rss_kb": rss_kb, "utime": ut, "stime": cum - ut})
                ts += spec.interval_ms
            samples += task_samples
            status = 1 if k < spec.failed else 0
            inp = f"gen_{scale}_10s.mp4"
            out = f"gen_{scale}_10s_{scale}_{codec}_{preset}_n{k:04d}.mp4"
            ev = dict.fromkeys(ORIGINAL_EVENT_FIELDS)
            ev.update(trace_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), module_id="ffmpeg",
                      ts_enqueue=enq, ts_start=start, ts_end=end, node=node, stage="cloud", method="CLI",
                      path="ffmpeg", input=inp, output=out, pid=pid, cpuset="0-1" if units == 2 else None,
                      bytes_in=8_000_000, bytes_out=0 if status else 900_000, status=status)
            events.append(ev)
            last = task_samples[-1] if task_samples else None
            truth.tasks.append({"node": node, "pid": pid, "trace_id": ev["trace_id"], "profile": prof,
                                "cpu_units": units, "ts_enqueue": enq, "ts_start": start, "ts_end": end,
                                "status": status, "cpu_ms": rate * dur,
                                "sampled_ms": (last["utime"] + last["stime"]) * 1000 / spec.clk_tck if last else 0.0,
                                "samples": len(task_samples)})
            t = end + rng.randint(0, 300)
        samples.sort(key=lambda s: (s["ts_ms"], s["pid"]))
        if spec.raw:
            (ndir / ORIGINAL_NODE_META).write_text(json.dumps(meta))
            _write_lines(ndir / ORIGINAL_ADAPTER_EVENTS, events)
            _write_lines(ndir / "proc_metrics.jsonl",
                         [{k: s[k] for k in ORIGINAL_RAW_SAMPLE_FIELDS} for s in samples])
            if spec.merged:
                _write_lines(ndir / ORIGINAL_MERGED_EVENTS, _merged(events, node))
        if spec.cts:
            _write_cts(ndir / spec.cts_dir, meta, events, samples, spec.clk_tck)
    return truth


def _write_lines(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _merged(events: list[dict], node: str) -> list[dict]:
    """The original parse's events.jsonl: events.*.jsonl sorted by time then pid, node/stage filled in."""
    rows = sorted(events, key=lambda x: (x.get("ts_ms") or x.get("ts_enqueue") or x.get("ts_start") or 0,
                                         x.get("pid", 0)))
    return [{**r, "node": r.get("node") or node, "stage": r.get("stage") or "cloud"} for r in rows]


def _write_cts(cts: Path, meta: dict, events: list[dict], samples: list[dict], clk_tck: int) -> None:
    """The original parse's CTS folder (documented rules: differences per PID, first sample 0/0)."""
    cts.mkdir(parents=True, exist_ok=True)
    freq = meta["cpu_freq_mhz"]
    mem = meta["mem_mb"]
    nodes = [{"node_id": meta["node"], "stage": meta["stage"], "cpu_cores": meta["cpu_cores"],
              "mem_mb": int(round(mem / 1024) * 1024) if mem > 0 else mem, "cpu_model": meta["cpu_model"],
              "cpu_freq_mhz": int(round(freq / 100) * 100) if freq > 0 else freq}]
    (cts / ORIGINAL_CTS_NODES).write_text(json.dumps(nodes, indent=2))
    _write_lines(cts / ORIGINAL_CTS_INVOCATIONS,
                 [{k: e.get(k) for k in ORIGINAL_INVOCATION_FIELDS} for e in _merged(events, meta["node"])])
    last: dict[int, tuple[int, int]] = {}
    rows = []
    for s in samples:
        ticks = s["utime"] + s["stime"]
        prev = last.get(s["pid"])
        dt = cpu = 0
        if prev is not None and s["ts_ms"] != prev[1]:
            dt = max(0, s["ts_ms"] - prev[1])
            cpu = int(max(0, ticks - prev[0]) * 1000 / clk_tck)
        last[s["pid"]] = (ticks, s["ts_ms"])
        rows.append(dict(zip(ORIGINAL_PROC_METRIC_FIELDS, (s["ts_ms"], s["pid"], dt, cpu, s["rss_kb"]))))
    _write_lines(cts / ORIGINAL_CTS_PROC_METRICS, rows)
    (cts / ORIGINAL_AUDIT).write_text(f"# CTS Audit Report\nNode: {meta['node']}  |  Stage: {meta['stage']}\n"
                                      f"\n## Summary\nInvocations: {len(events)}\n")


def main(argv: list[str] | None = None) -> int:
    """``python3 -m tracekit.cluster.synth_original --out DIR``: write the original's files for a small run."""
    import argparse

    from tracekit.core.errors import UsageError

    ap = argparse.ArgumentParser(prog="python3 -m tracekit.cluster.synth_original",
                                 description="Write synthetic data in the original Tracekit's raw and CTS formats "
                                             "(workers gathered as DIR/<node>/), then try: "
                                             "tools/import_original.py --input DIR")
    ap.add_argument("--out", required=True, help="folder to create")
    ap.add_argument("--nodes", type=int, default=2, help="workers [2]")
    ap.add_argument("--tasks", type=int, default=8, help="executions per worker [8]")
    ap.add_argument("--no-raw", action="store_true", help="only the CTS folders (as after deleting the raw logs)")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args(argv)
    if a.nodes < 1 or a.tasks < 1:
        raise UsageError("--nodes and --tasks must be >= 1")
    truth = generate(a.out, OriginalSpec(nodes=a.nodes, tasks=a.tasks, raw=not a.no_raw, seed=a.seed))
    print(f"{a.out}: {len(truth.node_dirs)} worker folder(s), {len(truth.tasks)} execution(s)")
    return 0


if __name__ == "__main__":
    from tracekit.core.cli import run_cli

    run_cli(main, "tracekit.cluster.synth_original")
