"""Compare an OpenDC result (``task.parquet``, ``host.parquet``) with the real run it simulates (its CTS).

Inputs: an OpenDC output folder (or the replay's, same schema) and the run's CTS. The real tasks are the executed,
non-fenced invocations (``ok``, and ``failed`` ones that ran); a simulated task matches a real one by
``task_name`` = ``trace_id`` (several attempts of one trace_id pair in submission order), or, when the simulation
has no names, by ``task_id`` = the export's dense id in submission order (from the exported ``tasks.parquet``
when ``trace_dir`` is given, else rebuilt from the CTS as the export orders its tasks). Times are compared on a
common origin: each side's first submission is 0.

The real "start" of a task is what OpenDC's ``schedule_time`` stands for: its placement (``ts_dispatch``) when
the exported trace holds the slot from placement (launch overhead included), its ``ts_start`` when it holds the
application alone. ``real_start="auto"`` picks the one whose durations (``ts_end`` minus it) are closer to the
simulated ``finish_time - schedule_time`` (OpenDC's NoDelay replays a task for exactly the sum of its
fragments, so this tells which trace was simulated).

Metrics and criteria: ``tracekit.trace.compare``. Writes ``compare_report.md``, ``compare_report.json`` and
three plots into ``out_dir``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tracekit.core import schema
from tracekit.core.errors import BadInput
from tracekit.trace import compare as cm
from tracekit.trace.opendc_results import SimCpu, SimTasks, find_output, host_cpu, read_tasks, task_cpu
from tracekit.trace.reader import open_cts
from tracekit.trace.vocabulary import has_run, invocation_order_key, submission_ms, utilisation_bin_ms

REPORT_MD, REPORT_JSON = "compare_report.md", "compare_report.json"
REAL_START_MODES = ("auto", "dispatch", "exec")
MAX_BINS = 100  # automatic bin width: the round width giving at most this many bins over the run
WORST = 10  # tasks listed with the largest start error
assert {"ts_enqueue", "ts_dispatch", "ts_start", "ts_end", "trace_id", "node_id", "status"} <= set(
    schema.INVOCATION_FIELDS)


@dataclass
class Pairs:
    """Matched real/simulated tasks: ``real[k]`` (an invocation) is simulated by entry ``sim[k]`` of SimTasks."""

    real: list[dict]
    sim: np.ndarray
    how: str
    real_unmatched: int
    sim_unmatched: int


@dataclass
class Comparison:
    """What ``compare`` found: the checks, the metrics, the files written."""

    verdict: str
    checks: list[cm.Check]
    metrics: dict
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    report: dict = field(default_factory=dict)


# ---- matching ----


def real_tasks(invocations: list[dict]) -> list[dict]:
    """Executions that a simulation can stand for: executed, not fenced (ok, and failed ones that ran), in the
    parser's (= the export's) submission order."""
    runs = [i for i in invocations if has_run(i) and i.get("status") in ("ok", "failed")]
    runs.sort(key=invocation_order_key)
    return runs


def _ok_first(runs: list[dict]) -> list[dict]:
    return [i for i in runs if i.get("status") == "ok"]


def match(runs: list[dict], sim: SimTasks, trace_names: dict | None = None) -> Pairs:
    """Pair real executions with simulated tasks: by name (= trace_id), else by dense task id (see module doc)."""
    names = sim.name
    how = "task_name = trace_id"
    if not any(names):
        if not sim.key_is_int and not all(str(k).isdigit() for k in sim.key):
            raise BadInput(f"{sim.path}: the simulated tasks have neither names nor integer ids to match the run by")
        ids = np.array([int(k) for k in sim.key], dtype=np.int64)
        if trace_names is not None:
            names = np.array([trace_names.get(int(i), "") for i in ids], dtype=object)
            how = "task_id -> name of the exported tasks.parquet"
        else:
            ok = _ok_first(runs)
            order = ok if (ids.size == 0 or ids.max() < len(ok)) else runs
            real_idx, sim_idx = [], []
            for j, i in enumerate(ids):
                if 0 <= i < len(order):
                    real_idx.append(int(i))
                    sim_idx.append(j)
            used = set(real_idx)
            return Pairs(real=[order[i] for i in real_idx], sim=np.array(sim_idx, dtype=np.int64),
                         how=f"task_id = dense id in submission order ({'ok' if order is ok else 'all'} executions)",
                         real_unmatched=sum(1 for k, i in enumerate(order) if k not in used and i["status"] == "ok"),
                         sim_unmatched=int(ids.size - len(sim_idx)))
    by_name: dict[str, list[int]] = defaultdict(list)
    order = np.lexsort((np.arange(len(names)), np.nan_to_num(sim.submission, nan=np.inf)))
    for j in order:
        if names[j]:
            by_name[names[j]].append(int(j))
    real_by: dict[str, list[dict]] = defaultdict(list)
    for inv in runs:
        real_by[str(inv["trace_id"])].append(inv)
    pr, ps, real_un = [], [], 0
    for tid, invs in real_by.items():
        sims = by_name.pop(tid, [])
        if len(sims) == len(invs):
            pairs = list(zip(invs, sims))
        elif sims:  # the export left some attempts out: the last simulated task stands for the ok execution
            ok = [i for i in invs if i.get("status") == "ok"] or invs[-1:]
            pairs = [(ok[-1], sims[-1])]
        else:
            pairs = []
        pr += [p[0] for p in pairs]
        ps += [p[1] for p in pairs]
        paired = {id(p[0]) for p in pairs}
        real_un += sum(1 for i in invs if i.get("status") == "ok" and id(i) not in paired)
    sim_un = sum(len(v) for v in by_name.values()) + int(sum(1 for x in names if not x))
    return Pairs(real=pr, sim=np.array(ps, dtype=np.int64), how=how, real_unmatched=real_un, sim_unmatched=sim_un)


def exported_names(trace_dir: str | Path) -> dict[int, str]:
    """id -> name of an exported OpenDC trace (``tasks.parquet``)."""
    p = Path(trace_dir)
    p = p / "tasks.parquet" if p.is_dir() else p
    try:
        t = pq.read_table(p, columns=["id", "name"])
    except (OSError, KeyError, ValueError) as exc:
        raise BadInput(f"{p}: cannot read id and name of the exported tasks ({str(exc).splitlines()[0]})",
                       path=p) from None
    return dict(zip(t["id"].to_pylist(), ("" if n is None else n for n in t["name"].to_pylist())))


# ---- the comparison ----


def _arr(invs: list[dict], key: str, fallback: str | None = None) -> np.ndarray:
    out = np.empty(len(invs), dtype=np.float64)
    for k, i in enumerate(invs):
        v = i.get(key)
        if v is None and fallback is not None:
            v = i.get(fallback)
        out[k] = math.nan if v is None else float(v)
    return out


def choose_start(invs: list[dict], sim_dur: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """Real start times for ``mode`` (auto / dispatch / exec) and a sentence saying which and why."""
    exec_start = _arr(invs, "ts_start")
    disp_start = _arr(invs, "ts_dispatch", "ts_start")
    end = _arr(invs, "ts_end")
    if mode == "exec":
        return exec_start, "real start = ts_start (the application's exec), as asked"
    if mode == "dispatch":
        return disp_start, "real start = ts_dispatch (placement), as asked"
    ok = ~np.isnan(sim_dur)
    if not ok.any():
        return disp_start, "real start = ts_dispatch (placement): no finished simulated task to decide by"
    d_exec = float(np.median(np.abs(sim_dur[ok] - (end - exec_start)[ok])))
    d_disp = float(np.median(np.abs(sim_dur[ok] - (end - disp_start)[ok])))
    if d_disp < d_exec:
        return disp_start, (f"real start = ts_dispatch (placement): simulated durations match the slot from placement "
                            f"(median gap {d_disp:.0f} ms vs {d_exec:.0f} ms for the application alone)")
    return exec_start, (f"real start = ts_start (exec): simulated durations match the application alone (median gap "
                        f"{d_exec:.0f} ms vs {d_disp:.0f} ms from placement)")


def _host_map(pairs: Pairs, sim: SimTasks, nodes: list[str]) -> dict[str, str]:
    """real node -> simulated host: the same name when the simulation uses node ids, else the host that ran most of
    the node's tasks (one host per node, greedy by count)."""
    hosts = set(sim.hosts)
    if hosts and hosts <= set(nodes):
        return {n: n for n in nodes if n in hosts}
    count: dict[tuple[str, str], int] = defaultdict(int)
    for inv, j in zip(pairs.real, pairs.sim):
        h = sim.host[j]
        if h >= 0:
            count[(str(inv["node_id"]), sim.hosts[h])] += 1
    out: dict[str, str] = {}
    taken: set[str] = set()
    for (n, h), _ in sorted(count.items(), key=lambda kv: (-kv[1], kv[0])):
        if n not in out and h not in taken:
            out[n] = h
            taken.add(h)
    return out


def _real_cpu(cts, nodes: list[str], origin: float, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Cores busy per bin per node from proc_metrics (each row's CPU spread evenly over its interval)."""
    parts: dict[str, list] = defaultdict(list)
    for n, ts, dt, cpu in cts.node_rows(nodes):
        parts[n].append((ts.astype(np.float64) - dt - origin, ts.astype(np.float64) - origin, cpu))
    width = np.diff(edges)
    out = {}
    for n in nodes:
        if parts[n]:
            s, e, a = (np.concatenate(x) for x in zip(*parts[n]))
            out[n] = cm.binned_amount(s, e, a, edges) / width
        else:
            out[n] = np.zeros(len(edges) - 1)
    return out


def compare(opendc_out: str | Path, input_dir: str | Path, out_dir: str | Path | None = None,
            th: cm.Thresholds | None = None, real_start: str = "auto", trace_dir: str | Path | None = None,
            bin_ms: float | None = None, plots: bool = True) -> Comparison:
    """Compare the OpenDC output under ``opendc_out`` with the run whose CTS is at ``input_dir`` (see module doc);
    write the report files and plots into ``out_dir`` (default ``<folder of task.parquet>/compare``)."""
    th = th or cm.Thresholds()
    task_path, host_path = find_output(opendc_out)
    sim = read_tasks(task_path)
    cts = open_cts(input_dir)
    notes = list(cts.notes)
    runs = real_tasks(cts.invocations())
    node_meta = {str(n.get("node_id")): n for n in cts.nodes(strict=False)}
    if not runs:
        raise BadInput(f"{cts.path}: no executed task in the run to compare with", path=cts.path)
    pairs = match(runs, sim, exported_names(trace_dir) if trace_dir else None)
    if not pairs.real:
        raise BadInput(f"{task_path}: no simulated task matches a task of the run ({pairs.how}; e.g. simulated "
                       f"{sim.name[0] if len(sim.name) else '-'!r} vs real {runs[0]['trace_id']!r}): is it the "
                       "simulation of this run?", path=task_path)
    j = pairs.sim
    fin_ok = sim.finished[j]
    inv = pairs.real
    sim_dur = np.where(fin_ok, sim.finish[j] - sim.schedule[j], np.nan)
    start_real_abs, start_note = choose_start(inv, sim_dur, real_start)
    notes.append(start_note)
    sub_real_abs = np.array([submission_ms(i) for i in inv], dtype=np.float64)
    end_real_abs = _arr(inv, "ts_end")
    r0 = float(sub_real_abs.min())
    s0 = float(np.nanmin(sim.submission[j])) if not np.isnan(sim.submission[j]).all() else float(
        np.nanmin(sim.schedule[j]))
    # real, relative to the first real submission; simulated, relative to the first simulated submission
    r_sub, r_start, r_end = sub_real_abs - r0, start_real_abs - r0, end_real_abs - r0
    s_sub, s_start, s_end = sim.submission[j] - s0, sim.schedule[j] - s0, sim.finish[j] - s0
    f = fin_ok
    real_wait = r_start - r_sub
    sim_wait = s_start - s_sub
    real_span = float(np.max(r_end))
    sim_span = float(np.max(s_end[f])) if f.any() else math.nan
    span = max(real_span, sim_span if not math.isnan(sim_span) else 0.0, 1.0)
    auto_bin = bin_ms is None
    bin_w = float(bin_ms) if bin_ms else float(utilisation_bin_ms(span, MAX_BINS))
    nb = int(math.ceil(span / bin_w))
    edges_tp = bin_w * np.arange(1, nb + 1)
    rmse0, best, lag = cm.throughput_rmse(r_end, s_end[f], edges_tp, th.max_lag_bins)
    metrics: dict = {
        "coverage": {"real": sum(1 for i in runs if i.get("status") == "ok"), "sim": len(sim.key),
                     "matched": len(inv), "real_unmatched": pairs.real_unmatched, "sim_unmatched": pairs.sim_unmatched,
                     "sim_unfinished": int((~f).sum())},
        "makespan": {"real_ms": real_span, "sim_ms": sim_span},
        "start": cm.abs_summary((s_start - r_start)[f]),
        "wait_error": cm.abs_summary((sim_wait - real_wait)[f]),
        "wait": cm.percentile_errors(real_wait[f], sim_wait[f], tuple(sorted(th.wait_rel)), th.wait_floor_ms),
        "ks": cm.ks_2samp(real_wait[f], sim_wait[f]),
        "throughput": {"rmse_lag0": rmse0, "best_rmse": best, "best_lag": lag, "bin_ms": bin_w},
    }
    # CPU per node
    nodes = sorted({str(i["node_id"]) for i in inv} | set(node_meta))
    hmap = _host_map(pairs, sim, nodes)
    iv = sim.interval_ms if not math.isnan(sim.interval_ms) else 0.0
    cpu_bin = max(bin_w, iv) if auto_bin else bin_w
    edges_cpu = cpu_bin * np.arange(0, int(math.ceil(span / cpu_bin)) + 1)
    real_cpu = _real_cpu(cts, nodes, r0, edges_cpu)
    simcpu: SimCpu = host_cpu(host_path) if host_path is not None else task_cpu(sim)
    cpu_metrics, cpu_series = {}, {}
    for n in nodes:
        h = hmap.get(n)
        entry: dict = {"host": f"simulated host {h}" if h else ""}
        if h is None or h not in simcpu.hosts:
            entry["missing"] = f"no simulated host ran the tasks of {n}"
            cpu_metrics[n] = entry
            continue
        s, e, a = simcpu.hosts[h]
        series = cm.binned_amount(s - s0, e - s0, a, edges_cpu) / np.diff(edges_cpu)
        if simcpu.unit == "mhz_ms":
            mhz = node_meta.get(n, {}).get("cpu_freq_mhz")
            if not mhz:
                entry["missing"] = f"per-core MHz of {n} unknown (nodes.json): simulated MHz cannot become cores"
                cpu_metrics[n] = entry
                continue
            series = series / float(mhz)
        r = real_cpu[n]
        busy = r[r > 0]
        entry.update(smape=cm.smape(r, series), pearson=cm.pearson(r, series), rmse=cm.rmse(r, series),
                     median=float(np.median(busy)) if busy.size else 0.0, source=simcpu.source, bin_ms=cpu_bin)
        cpu_metrics[n] = entry
        cpu_series[n] = (r, series)
    metrics["cpu"] = cpu_metrics
    checks = cm.checks(metrics, th)
    verdict = cm.overall(checks)
    out = Path(out_dir) if out_dir else task_path.parent / "compare"
    out.mkdir(parents=True, exist_ok=True)
    errs = (s_start - r_start)
    worst = np.argsort(-np.abs(np.nan_to_num(errs, nan=0.0)))[:WORST]
    report = {
        "verdict": verdict,
        "inputs": {"opendc_task": str(task_path), "opendc_host": str(host_path) if host_path else None,
                   "cts": str(cts.path), "trace": str(trace_dir) if trace_dir else None},
        "matching": {"how": pairs.how, "real_start": start_note, "host_map": hmap,
                     "cpu_source": simcpu.source, "export_interval_ms": None if math.isnan(sim.interval_ms)
                     else sim.interval_ms, "cpu_bin_ms": cpu_bin, "throughput_bin_ms": bin_w},
        "thresholds": th.as_dict(),
        "metrics": _jsonable(metrics),
        "worst_start_errors": [{"trace_id": inv[k]["trace_id"], "attempt": inv[k].get("attempt"),
                                "real_start_ms": _jsonable(r_start[k]), "sim_start_ms": _jsonable(s_start[k]),
                                "error_ms": _jsonable(errs[k])} for k in worst if f[k]],
        "checks": [c.__dict__ for c in checks],
        "notes": notes,
    }
    files = [out / REPORT_MD, out / REPORT_JSON]
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    if plots:
        from tracekit.trace import compare_plots

        files += compare_plots.draw(out, inv, sim, r0, s0, start_real_abs, hmap, lag * bin_w, r_end, s_end[f],
                                    edges_cpu, cpu_series)
    (out / REPORT_MD).write_text(markdown(report, checks, [p.name for p in files[2:]]))
    return Comparison(verdict=verdict, checks=checks, metrics=metrics, notes=notes, files=files, report=report)


def _jsonable(x):
    """Metrics as JSON: nan -> null, numpy scalars -> Python, int keys -> str."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def markdown(report: dict, checks: list[cm.Check], plots: list[str]) -> str:
    """The Markdown report: inputs, how tasks were matched, the PASS/FAIL table, the plots."""
    m = report["matching"]
    iv = "n/a" if m["export_interval_ms"] is None else f"{m['export_interval_ms'] / 1000:g} s"
    lines = [f"# Sim-vs-real comparison: {report['verdict']}", "",
             f"- OpenDC result: `{report['inputs']['opendc_task']}`"
             + (f" and `{report['inputs']['opendc_host']}`" if report["inputs"]["opendc_host"] else ""),
             f"- real run (CTS): `{report['inputs']['cts']}`",
             f"- matched by {m['how']}; {m['real_start']}",
             "- hosts: " + (", ".join(f"{n} -> {h}" for n, h in m["host_map"].items()) or "none matched")
             + f"; simulated CPU from {m['cpu_source']}",
             f"- bins: throughput {m['throughput_bin_ms'] / 1000:g} s, CPU {m['cpu_bin_ms'] / 1000:g} s; OpenDC "
             f"export interval {iv}",
             "", "| check | value | limit | verdict | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c.name} | {c.value} | {c.limit} | {c.verdict} | {c.detail} |" for c in checks]
    if report["worst_start_errors"]:
        lines += ["", "Largest task start errors (simulated - real, s):", ""]
        lines += [f"- {w['trace_id']} (attempt {w['attempt']}): {w['error_ms'] / 1000:+.3f}"
                  for w in report["worst_start_errors"]]
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
