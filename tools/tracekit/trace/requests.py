"""Request-level CTS (docs/services.md, "Requests in the CTS"): the load generator's lines -> ``CTS/requests.jsonl``
linked to the service's process identity, the audit's request check, and the latency plot.

Raw lines: ``controller/requests/<trace_id>.jsonl`` (``schema.REQUEST_RAW_FIELDS``, times already in the
controller's time base). Each line is linked to the execution of its service task that ran when the request was
sent (``node_id, pid, starttime, attempt`` from ``invocations``) and gets ``latency_ms = ts_end - ts_send``.
Order: by service (its first invocation's CTS order), then request number. Nothing is written for a run without
requests, so batch-only runs are unchanged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from tracekit.core.schema import REQUEST_FIELDS
from tracekit.trace.model import ParseResult

REQUESTS = "requests.jsonl"
RAW_DIR = ("controller", "requests")  # under the run folder (core.paths.requests_dir)
PLOT = "requests.png"
_NUM = re.compile(r"-r(\d+)$")


@dataclass
class ServiceRequests:
    """The requests of one service task, with their figures."""

    trace_id: str
    lines: list[dict] = field(default_factory=list)
    unlinked: int = 0

    def latencies(self) -> np.ndarray:
        return np.array([ln["latency_ms"] for ln in self.lines if not ln["error"]], dtype=float)

    def errors(self) -> int:
        return sum(1 for ln in self.lines if ln["error"] or (ln["status"] or 0) >= 500)


def raw_files(run_dir: Path) -> list[Path]:
    """The load generator's request files of a run (sorted by name)."""
    folder = run_dir.joinpath(*RAW_DIR)
    return sorted(p for p in folder.glob("*.jsonl")) if folder.is_dir() else []


def _req_no(rid: str) -> int:
    m = _NUM.search(rid or "")
    return int(m.group(1)) if m else 0


def link(raw: list[dict], invocations: list[dict]) -> tuple[list[dict], int]:
    """Raw request lines -> CTS lines (``schema.REQUEST_FIELDS``); also how many found no execution of their
    service (linked fields left null). Pure."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for inv in invocations:
        if inv.get("ts_start") is not None and inv.get("pid") is not None:
            runs[inv["trace_id"]].append(inv)
    out, unlinked = [], 0
    for ln in raw:
        cands = runs.get(ln.get("trace_id"), [])
        t = ln.get("ts_send")
        inv = next((i for i in cands if t is not None and i["ts_start"] <= t <= i["ts_end"]), None)
        if inv is None and cands:  # sent outside every run (e.g. a refused connection): the nearest execution
            inv = min(cands, key=lambda i: max(i["ts_start"] - (t or 0), 0, (t or 0) - i["ts_end"]))
        if inv is None:
            unlinked += 1
        row = dict.fromkeys(REQUEST_FIELDS)
        row.update({k: ln.get(k) for k in REQUEST_FIELDS if k in ln})
        if inv is not None:
            row.update(node_id=inv["node_id"], pid=inv["pid"], starttime=inv.get("starttime"),
                       attempt=inv.get("attempt"))
        if ln.get("ts_end") is not None and t is not None:
            row["latency_ms"] = round(ln["ts_end"] - t, 3)
        out.append(row)
    return out, unlinked


def write_cts(result: ParseResult) -> dict[str, ServiceRequests]:
    """Write ``CTS/requests.jsonl`` when the run has request files; the requests per service (empty otherwise)."""
    files = raw_files(result.run_dir)
    if not files:
        return {}
    raw = []
    for p in files:
        with open(p, "rb") as f:
            raw += [orjson.loads(b) for b in f if b.strip()]
    order = {inv["trace_id"]: k for k, inv in reversed(list(enumerate(result.invocations)))}
    raw.sort(key=lambda ln: (order.get(ln.get("trace_id"), len(order)), str(ln.get("trace_id")),
                             _req_no(ln.get("request_id"))))
    lines, _ = link(raw, result.invocations)
    tmp = result.out_dir / (REQUESTS + ".tmp")
    with open(tmp, "wb") as f:
        for row in lines:
            f.write(orjson.dumps(row) + b"\n")
    tmp.replace(result.out_dir / REQUESTS)
    return group(lines)


def group(lines: list[dict]) -> dict[str, ServiceRequests]:
    """CTS request lines by service trace_id (in order of appearance)."""
    out: dict[str, ServiceRequests] = {}
    for row in lines:
        s = out.setdefault(row["trace_id"], ServiceRequests(row["trace_id"]))
        s.lines.append(row)
        if row.get("pid") is None:
            s.unlinked += 1
    return out


def read_cts(out_dir: Path) -> dict[str, ServiceRequests]:
    """The requests of ``CTS/requests.jsonl`` by service (empty when the run has none)."""
    path = out_dir / REQUESTS
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        return group([orjson.loads(b) for b in f if b.strip()])


def throughput(lines: list[dict], bin_ms: float = 1000.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Completed requests and errors per ``bin_ms`` by completion time: (bin starts ms, ok per s, errors per s)."""
    ends = np.array([ln["ts_end"] for ln in lines if ln.get("ts_end") is not None], dtype=float)
    if ends.size == 0:
        return np.array([]), np.array([]), np.array([])
    bad = np.array([bool(ln["error"] or (ln["status"] or 0) >= 500) for ln in lines if ln.get("ts_end") is not None])
    t0 = ends.min()
    idx = ((ends - t0) // bin_ms).astype(int)
    n = idx.max() + 1
    ok = np.bincount(idx[~bad], minlength=n) * (1000.0 / bin_ms)
    err = np.bincount(idx[bad], minlength=n) * (1000.0 / bin_ms)
    return t0 + np.arange(n) * bin_ms, ok, err


def service_figures(s: ServiceRequests) -> dict:
    """Count, errors, error rate, latency p50/p90/p99 (ms), mean and peak throughput (req/s), server time
    p50 (ms) and the client-minus-server latency p50 (ms)."""
    lat = s.latencies()
    pct = np.percentile(lat, [50, 90, 99]) if lat.size else [None] * 3
    sends = [ln["ts_send"] for ln in s.lines if ln.get("ts_send") is not None]
    ends = [ln["ts_end"] for ln in s.lines if ln.get("ts_end") is not None]
    span_s = (max(ends) - min(sends)) / 1000 if sends and ends else 0.0
    _, ok, err = throughput(s.lines)
    pairs = [(ln["latency_ms"], ln["server_ms"]) for ln in s.lines
             if not ln["error"] and ln.get("server_ms") is not None and ln.get("latency_ms") is not None]
    gap = np.array([a - b for a, b in pairs]) if pairs else np.array([])
    return {"count": len(s.lines), "errors": s.errors(), "error_rate": s.errors() / max(1, len(s.lines)),
            "p50": pct[0], "p90": pct[1], "p99": pct[2], "mean_rps": len(s.lines) / span_s if span_s else None,
            "peak_rps": float((ok + err).max()) if ok.size else None,
            "server_p50": float(np.percentile([b for _, b in pairs], 50)) if pairs else None,
            "gap_p50": float(np.percentile(gap, 50)) if gap.size else None,
            "below_server": int((gap < -1.0).sum()) if gap.size else 0, "unlinked": s.unlinked,
            "not_contiguous": not_contiguous(s.lines)}


def not_contiguous(lines: list[dict]) -> int:
    """Request numbers missing or repeated among ``<trace_id>-r1 .. -rN`` (0: every request sent is there once)."""
    nums = sorted(_req_no(ln["request_id"]) for ln in lines)
    return sum(1 for k, n in enumerate(nums, 1) if n != k)


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def summary_lines(services: dict[str, ServiceRequests]) -> list[str]:
    """Detail lines for the audit: one per service."""
    out = []
    for tid, s in services.items():
        f = service_figures(s)
        out.append(f"{tid}: {f['count']} requests, {f['errors']} errors ({100 * f['error_rate']:.2f} %), latency "
                   f"p50/p90/p99 {_f(f['p50'])}/{_f(f['p90'])}/{_f(f['p99'])} ms, throughput mean "
                   f"{_f(f['mean_rps'], '.1f')} req/s (peak second {_f(f['peak_rps'], '.0f')}), server time p50 "
                   f"{_f(f['server_p50'], '.3f')} ms, client - server p50 {_f(f['gap_p50'], '.3f')} ms")
    return out


def verdict(services: dict[str, ServiceRequests]) -> tuple[str, str, list[str]]:
    """The audit's request check: FAIL when a request has no execution of its service, reports a latency shorter
    than the server's own handling time (by more than 1 ms), or request numbers are missing or repeated; WARN on
    errors; else PASS."""
    figs = {tid: service_figures(s) for tid, s in services.items()}
    unlinked = sum(f["unlinked"] for f in figs.values())
    below = sum(f["below_server"] for f in figs.values())
    errors = sum(f["errors"] for f in figs.values())
    total = sum(f["count"] for f in figs.values())
    gaps = sum(f["not_contiguous"] for f in figs.values())
    v = "FAIL" if unlinked or below or gaps else "WARN" if errors else "PASS"
    summ = (f"{total} requests to {len(figs)} service(s), {errors} errors, {unlinked} not linked to an execution, "
            f"{below} with a latency below the server's own time, {gaps} request numbers missing or repeated")
    return v, summ, summary_lines(services)


def plot(result: ParseResult, services: dict[str, ServiceRequests], path: Path) -> None:
    """Per service: latency of every request over time (p50 per second drawn over it), throughput and errors per
    second, and the service's CPU (cores, from its proc_metrics rows) on the same time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = service_cpu(result.out_dir, set(services))
    fig, axes = plt.subplots(3 * len(services), 1, figsize=(12, 7.5 * len(services)), sharex=True, squeeze=False)
    t0 = min(min(ln["ts_send"] for ln in s.lines) for s in services.values())
    for k, (tid, s) in enumerate(services.items()):
        a1, a2, a3 = (axes[3 * k + j][0] for j in range(3))
        ok = [ln for ln in s.lines if not ln["error"]]
        x = np.array([(ln["ts_send"] - t0) / 1000 for ln in ok])
        y = np.array([ln["latency_ms"] for ln in ok])
        a1.scatter(x, y, s=3, alpha=0.4, label="request latency")
        if x.size:
            b = np.floor(x).astype(int)
            med = [(i + 0.5, float(np.median(y[b == i]))) for i in np.unique(b)]
            a1.plot([m[0] for m in med], [m[1] for m in med], color="black", label="p50 per second")
            sv = [((ln["ts_send"] - t0) / 1000, ln["server_ms"]) for ln in ok if ln.get("server_ms") is not None]
            if sv:
                a1.scatter([p[0] for p in sv], [max(p[1], 1e-3) for p in sv], s=2, alpha=0.3, color="tab:green",
                           label="server's own time")
            a1.set_yscale("log")
        a1.set_ylabel("latency (ms)")
        a1.set_title(f"service {tid}: requests")
        a1.legend(loc="upper right", fontsize=8)
        starts, okr, errr = throughput(s.lines)
        if starts.size:
            xs = (starts - t0) / 1000
            a2.step(xs, okr, where="post", label="ok / s")
            a2.step(xs, errr, where="post", color="tab:red", label="errors / s")
        a2.set_ylabel("requests / s")
        a2.legend(loc="upper right", fontsize=8)
        rows = merge_short(cpu.get(tid, []))
        if rows:
            xs = np.array([(r["ts_ms"] - t0) / 1000 for r in rows])
            ys = np.array([r["cpu_ms"] / r["dt_ms"] if r["dt_ms"] else 0.0 for r in rows])
            a3.step(xs, ys, where="post", color="tab:purple")
        a3.set_ylabel("service CPU (cores)")
    axes[-1][0].set_xlabel("seconds since the first request")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_short(rows: list[dict], min_dt_ms: float = 50.0) -> list[dict]:
    """For drawing: a row shorter than ``min_dt_ms`` (e.g. the last one, from the final sample to the exit, holding
    the tail up to the exact total) is merged into the one before, so a few ms do not draw as many cores."""
    out: list[dict] = []
    for r in rows:
        if out and r["dt_ms"] < min_dt_ms:
            prev = out[-1]
            out[-1] = dict(prev, ts_ms=r["ts_ms"], dt_ms=prev["dt_ms"] + r["dt_ms"],
                           cpu_ms=prev["cpu_ms"] + r["cpu_ms"])
        else:
            out.append(dict(r))
    return out


def service_cpu(out_dir: Path, trace_ids: set[str]) -> dict[str, list[dict]]:
    """The proc_metrics rows of these tasks (streamed; only lines naming one of them are parsed)."""
    out: dict[str, list[dict]] = defaultdict(list)
    path = out_dir / "proc_metrics.jsonl"
    if not path.exists():
        return out
    needles = [f'"{t}"'.encode() for t in trace_ids]
    with open(path, "rb") as f:
        for b in f:
            if any(n in b for n in needles):
                row = orjson.loads(b)
                if row.get("trace_id") in trace_ids:
                    out[row["trace_id"]].append(row)
    return out
