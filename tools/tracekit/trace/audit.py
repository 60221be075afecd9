"""Audit of a parsed run: checks with a verdict (PASS / WARN / FAIL) and numbers, rendered as markdown.

Input is the ``model.ParseResult`` of the parse (it carries what was observed while streaming, so the audit never
re-reads the samples). ``run_checks`` is pure over that object; ``write_report`` renders ``audit_report.md``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core.schema import LAUNCH_STAGES
from tracekit.trace import legacy, requests
from tracekit.trace.cts import parse_run
from tracekit.trace.intervals import max_overlap
from tracekit.trace.model import ParseResult
from tracekit.trace.vocabulary import has_run, no_cyclic_gc, shared_hosts, task_key

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
REPORT = "audit_report.md"
DEFAULT_INTERVAL_MS = 200  # the collector's default PROC_INTERVAL_MS (used when node.json does not say)
# Fields an executed attempt must have (FAIL when missing) and should have (WARN when missing).
REQUIRED_RAN = ("trace_id", "pid", "ts_start", "ts_end", "node_id", "attempt", "cpu_ms", "cpu_units")
EXPECTED_RAN = ("starttime", "ts_enqueue", "ts_dispatch", "profile", "exit_code", "max_rss_kb", "binding")
REQUIRED_NODE = ("cpu_cores", "clk_tck", "page_size")
EXPECTED_NODE = ("cpu_freq_mhz", "capacity", "mem_mb", "cpu_model")


@dataclass
class Check:
    """One audit check: verdict, a one-line summary with numbers, and optional detail lines."""

    name: str
    verdict: str
    summary: str
    details: list[str] = field(default_factory=list)


def _worst(*verdicts: str) -> str:
    return FAIL if FAIL in verdicts else WARN if WARN in verdicts else PASS


def check_inputs(result: ParseResult) -> Check:
    """Malformed / truncated lines, duplicate and unknown events."""
    r = result
    n = r.bad.count
    details = list(r.bad.examples)
    if n > len(r.bad.examples):
        details.append(f"... and {n - len(r.bad.examples)} more")
    summ = (f"{n} malformed or truncated line(s) skipped; {r.duplicate_events} duplicate exec event(s); "
            f"{r.ticks_read} sample ticks, {r.samples_read} process samples read")
    return Check("Input lines", WARN if n or r.duplicate_events else PASS, summ, details)


def check_nodes(result: ParseResult) -> Check:
    """Node metadata: clock offsets, CLK_TCK/page size defaults, completeness of nodes.json."""
    r = result
    details, verdicts = [], []
    for n in r.nodes:
        row = n.row()
        miss_req = [f for f in REQUIRED_NODE if row.get(f) is None]
        miss_exp = [f for f in EXPECTED_NODE if row.get(f) is None]
        line = (f"`{n.node_id}`: clock offset {n.offset_ms:+.3f} ms (from {n.offset_source}"
                f"{'' if n.rtt_ms is None else f', rtt {n.rtt_ms} ms'}), clk_tck {n.clk_tck}, page {n.page_size} B")
        if n.defaults_used:
            line += "; DEFAULTED: " + ", ".join(n.defaults_used)
            verdicts.append(WARN)
        if miss_req:
            line += "; missing: " + ", ".join(miss_req)
            verdicts.append(FAIL)
        if miss_exp:
            line += "; unknown: " + ", ".join(miss_exp)
            verdicts.append(WARN)
        details.append(line)
    placed_nodes = {p.get("node") for p in r.placements} - {n.node_id for n in r.nodes} - {None}
    if placed_nodes:
        details.append("nodes with placements but no logs folder (not gathered?): " + ", ".join(sorted(placed_nodes)))
        verdicts.append(WARN)
    for node in r.missing_samples_file:
        details.append(f"`{node}`: no samples.jsonl (collector not running?)")
        verdicts.append(WARN)
    rows = [n.row() for n in r.nodes]
    cores = {row["node_id"]: row.get("cpu_cores") or 0 for row in rows}
    for group in shared_hosts(rows):  # a note, not a warning: emulated clusters do this on purpose
        details.append(f"note: {', '.join(f'`{g}`' for g in group)} run on one machine (same kernel: emulated or "
                       f"overlapping nodes) and share its {max(cores[g] for g in group)} physical cores, not "
                       f"{sum(cores[g] for g in group)}; the OpenDC export exports them as separate hosts and says so")
    return Check("Node metadata", _worst(*verdicts), f"{len(r.nodes)} node(s)", details)


def check_fields(result: ParseResult) -> Check:
    """Field completeness of invocations."""
    r = result
    ran = r.executed()
    fields = (*REQUIRED_RAN, *EXPECTED_RAN)
    columns = zip(*[[inv.get(f) for f in fields] for inv in ran]) if ran else [() for _ in fields]
    missing = {f: n for f, col in zip(fields, columns) if (n := col.count(None))}
    miss_req = Counter({f: n for f, n in missing.items() if f in REQUIRED_RAN})
    miss_exp = Counter({f: n for f, n in missing.items() if f in EXPECTED_RAN})
    not_ran = [i for i in r.invocations if not has_run(i)]
    no_reason = sum(1 for i in not_ran if not i.get("error"))
    details = [f"required field `{f}` missing in {c} executed invocation(s)" for f, c in sorted(miss_req.items())]
    details += [f"field `{f}` missing in {c} executed invocation(s)" for f, c in sorted(miss_exp.items())]
    if no_reason:
        details.append(f"{no_reason} record(s) of tasks that did not run have no reason")
    total_fields = len(ran) * (len(REQUIRED_RAN) + len(EXPECTED_RAN))
    filled = total_fields - sum(miss_req.values()) - sum(miss_exp.values())
    pct = 100.0 * filled / total_fields if total_fields else 100.0
    verdict = FAIL if (miss_req or no_reason) else WARN if miss_exp else PASS
    summ = (f"{len(r.invocations)} invocation(s), {len(ran)} executed; {pct:.2f}% of checked fields present; "
            f"{r.rows_written} proc_metrics row(s)")
    return Check("Field completeness", verdict, summ, details)


def check_temporal(result: ParseResult) -> Check:
    """enqueue <= dispatch <= start <= end (within clock tolerance), and monotonic samples."""
    r = result
    tol = {n.node_id: 1.0 + (n.rtt_ms or 0.0) / 2 for n in r.nodes}  # rounding + half the offset probe's rtt
    pairs = (("ts_enqueue", "ts_dispatch"), ("ts_dispatch", "ts_start"), ("ts_start", "ts_end"))
    bad: Counter = Counter()
    within: Counter = Counter()
    worst: dict = {}
    examples = []
    checked = len(r.executed())
    for inv in r.executed():
        for a, b in pairs:
            if inv.get(a) is None or inv.get(b) is None:
                continue
            gap = inv[a] - inv[b]
            if gap > 0:
                name = f"{a} > {b}"
                if gap > tol.get(inv["node_id"], 1.0):
                    bad[name] += 1
                    worst[name] = max(worst.get(name, 0), gap)
                    if len(examples) < 10:
                        examples.append(f"{inv['trace_id']} attempt {inv['attempt']} on {inv['node_id']}: "
                                        f"{name} by {gap} ms")
                else:
                    within[name] += 1
    nonmono = sum(r.non_monotonic_ticks.values())
    cum_down = sum(s.non_monotonic for s in r.stats.values())
    details = [f"{k}: {c} invocation(s), worst {worst[k]} ms" for k, c in sorted(bad.items())]
    details += [f"{k}: {c} within the clock tolerance (rounding + rtt/2)" for k, c in sorted(within.items())]
    details += examples
    if nonmono:
        details.append("sample ticks going back in time (dropped): "
                       + ", ".join(f"{n}={c}" for n, c in sorted(r.non_monotonic_ticks.items()) if c))
    if cum_down:
        details.append(f"{cum_down} sample(s) whose cumulative CPU went down (clamped to the previous value)")
    verdict = FAIL if (bad or nonmono) else WARN if cum_down else PASS
    summ = (f"{checked} executed invocation(s) checked: {sum(bad.values())} order violation(s); "
            f"{nonmono} non-monotonic tick(s); {cum_down} decreasing CPU counter(s)")
    return Check("Temporal consistency", verdict, summ, details)


def check_xref(result: ParseResult) -> Check:
    """Every task has samples, every sample a task."""
    r = result
    interval = {n.node_id: int((n.meta.get("collector") or {}).get("interval_ms") or DEFAULT_INTERVAL_MS)
                for n in r.nodes}
    without_short, without_long = [], []
    at_exit_only = 0
    for inv in r.executed():
        key = task_key(inv["node_id"], inv["trace_id"], inv["attempt"])
        if r.task_samples.get(key, 0) == 0:
            st = r.stats.get(key)
            if st is not None and st.samples_after > 0:
                # shorter than an interval: the adapter held the exited process until the collector sampled it
                # (same pid + starttime, final counters); its rows come from the exact totals
                at_exit_only += 1
                continue
            dur = inv["ts_end"] - inv["ts_start"]
            (without_long if dur > 2 * interval.get(inv["node_id"], DEFAULT_INTERVAL_MS) else without_short).append(
                f"{inv['trace_id']} attempt {inv['attempt']} on {inv['node_id']} ({dur} ms)")
    details = []
    if without_long:
        details.append(f"task without samples (ran > 2 sampling intervals): {len(without_long)}")
        details += ["  " + x for x in without_long[:10]]
    if without_short:
        details.append(f"task without samples (shorter than 2 sampling intervals): {len(without_short)}")
        details += ["  " + x for x in without_short[:10]]
    known = {d.get("trace_id") for d in r.dispatch} | {i["trace_id"] for i in r.invocations}
    unknown = sum(c for t, c in r.orphan_by_trace.items() if t not in known)
    killed = {t: c for t, c in r.orphan_by_trace.items() if t in known}
    if unknown:
        details.append(f"{unknown} sample(s) of processes with no exec event and a trace_id unknown to the run "
                       "(no task):")
        details += ["  " + x for x in r.orphan_examples]
    if killed:
        details.append(f"{sum(killed.values())} sample(s) of executions of known tasks that left no exec event "
                       f"(adapter killed / node died; their CPU is not in CTS): {sorted(killed)[:10]}")
    if r.untracked_samples:
        details.append(f"{r.untracked_samples} sample(s) of untraced processes (no trace_id: matched by name, "
                       f"PROC_MATCH): {len(r.matched)} matched process(es) kept in processes.jsonl, not counted "
                       "as tasks (docs/containers.md)")
        top = sorted(r.matched.values(), key=lambda m: -((m.cum_last_us or 0) - (m.cum_first_us or 0)))[:10]
        details += [f"  {m.node_id} pid {m.pid} {m.comm or '?'}"
                    f"{f' container {m.container_id[:12]}' if m.container_id else ''}: {m.samples} sample(s), "
                    f"{m.row()['cpu_ms'] or 0:.0f} ms CPU" for m in top]
    if r.trace_mismatch:
        details.append(f"{r.trace_mismatch} sample(s) whose trace_id differs from their process's exec event")
    ran = len(r.executed())
    verdict = (FAIL if (without_long or unknown or r.trace_mismatch)
               else WARN if (without_short or killed) else PASS)  # matched processes are kept: no warning
    if at_exit_only:
        details.append(f"{at_exit_only} task(s) shorter than the first sampling tick were sampled only at exit "
                       "(held for the collector; rows from the exact totals)")
    summ = (f"{ran - len(without_long) - len(without_short)}/{ran} executed task(s) have samples"
            f"{f' ({at_exit_only} only at exit)' if at_exit_only else ''}; {r.orphan_samples} sample(s) without a task")
    return Check("Cross-reference", verdict, summ, details)


def check_cpu(result: ParseResult) -> Check:
    """Sampled CPU vs exact totals: the tail share, over-counts (capped), and the rows' sum."""
    r = result
    exact = sum(r.exact_us.values())
    sampled = sum(s.last_sampled_us for s in r.stats.values())
    rows = sum(r.cpu_rows_us.values())
    tick_us = {n.node_id: 1_000_000 / n.clk_tck for n in r.nodes}
    over, details = [], []
    for key, st in r.stats.items():
        if st.over_us > max(2 * tick_us.get(key[0], 10_000), 0.01 * r.exact_us.get(key, 0)):
            over.append((st.over_us, key))
    mism = [k for k in r.exact_us if r.cpu_rows_us.get(k) != r.exact_us[k]]
    tail_pct = 100.0 * (exact - sampled) / exact if exact else 0.0
    rel = []
    for key, ex in r.exact_us.items():
        if ex > 0 and r.task_samples.get(key, 0) > 0:
            rel.append(100.0 * (ex - r.stats[key].last_sampled_us) / ex)
    if rel:
        details.append(f"per task, share of CPU after the last sample (taken from the exact total): "
                       f"median {statistics.median(rel):.2f}%, max {max(rel):.2f}%")
    for over_us, key in sorted(over, reverse=True)[:10]:
        details.append(f"{key[1]} attempt {key[2]} on {key[0]}: sampled CPU exceeded the exact total by "
                       f"{over_us / 1000:.1f} ms (capped)")
    if mism:
        details.append(f"{len(mism)} task(s) whose rows do not add up to the exact total: {mism[:5]}")
    sources = Counter(r.cpu_source.values())
    details.append("CPU source per task: " + ", ".join(f"{k}={v}" for k, v in sorted(sources.items())))
    verdict = FAIL if (over or mism) else PASS
    summ = (f"exact {exact / 1e6:.3f} CPU-s, sampled up to the last sample {sampled / 1e6:.3f} CPU-s "
            f"(tail {tail_pct:.2f}% from exact totals), rows sum {rows / 1e6:.3f} CPU-s; "
            f"{len(over)} task(s) over-sampled beyond tolerance")
    return Check("CPU accounting", verdict, summ, details)


def check_capacity(result: ParseResult) -> Check:
    """Sum of cpu_units of overlapping tasks never above the node's capacity."""
    r = result
    spans = defaultdict(list)
    for inv in r.executed():
        if inv.get("cpu_units") is not None:
            spans[inv["node_id"]].append((inv["ts_start"], inv["ts_end"], inv["cpu_units"]))
    details, verdicts = [], []
    for n in r.nodes:
        cap = n.worker.get("capacity")
        peak, at = max_overlap(spans.get(n.node_id, []))
        if cap is None:
            verdicts.append(WARN)
            details.append(f"`{n.node_id}`: peak {peak:g} unit(s); capacity unknown (no worker.json)")
        else:
            ok = peak <= cap
            verdicts.append(PASS if ok else FAIL)
            details.append(f"`{n.node_id}`: peak {peak:g} of {cap} unit(s)" + ("" if ok else f" EXCEEDED at {at}"))
    return Check("Capacity", _worst(*verdicts) if verdicts else WARN,
                 f"{sum(1 for v in verdicts if v == FAIL)} node(s) over capacity", details)


def check_fifo(result: ParseResult) -> Check:
    """First attempts are placed in dispatch (seq) order."""
    r = result
    if not r.placements or not r.dispatch:
        return Check("FIFO order", WARN, "not checked: placements.jsonl or dispatch.jsonl missing "
                     "(copy the controller's logs/$RUN_ID/ files next to the node folders)")
    seq = {d.get("trace_id"): d.get("seq") for d in r.dispatch}
    firsts = [p for p in r.placements if p.get("attempt", 1) == 1 and seq.get(p.get("trace_id")) is not None]
    inversions, examples, top = 0, [], None
    for p in firsts:  # file order = placement order (one scheduler appends)
        s = seq[p["trace_id"]]
        if top is not None and s < top[0]:
            inversions += 1
            if len(examples) < 10:
                examples.append(f"{p['trace_id']} (seq {s}) placed after {top[1]} (seq {top[0]})")
        if top is None or s > top[0]:
            top = (s, p["trace_id"])
    return Check("FIFO order", FAIL if inversions else PASS,
                 f"{len(firsts)} first placement(s), {inversions} out of dispatch order", examples)


def check_outcomes(result: ParseResult) -> Check:
    """Exactly one successful invocation per trace_id; no dispatched task without a final record."""
    r = result
    ok = Counter(i["trace_id"] for i in r.invocations if i.get("status") == "ok")
    failed = {i["trace_id"] for i in r.invocations if i.get("status") == "failed"}
    dup = sorted(t for t, c in ok.items() if c > 1)
    dispatched = [d.get("trace_id") for d in r.dispatch]
    lost = sorted(t for t in dispatched if t not in ok and t not in failed)
    unknown = sorted({i["trace_id"] for i in r.invocations} - set(dispatched)) if dispatched else []
    details = []
    if dup:
        details.append(f"trace_ids with more than one successful invocation: {len(dup)}: {dup[:10]}")
    if lost:
        details.append(f"dispatched but no ok/failed record (lost or still running?): {len(lost)}: {lost[:10]}")
    if unknown:
        details.append(f"invocations of trace_ids not in dispatch.jsonl: {len(unknown)}: {unknown[:10]}")
    fenced = sum(1 for i in r.invocations if i.get("status") == "fenced")
    verdict = FAIL if (dup or lost) else WARN if unknown else PASS
    summ = (f"{len(dispatched) or 'no dispatch.jsonl:'} dispatched, {len(ok)} with one ok invocation, "
            f"{len(failed - set(ok))} failed only, {fenced} fenced attempt(s), {len(lost)} lost, {len(dup)} duplicated")
    return Check("Outcomes (exactly one success per task)", verdict, summ, details)


def _reason(inv: dict) -> str:
    err = (inv.get("error") or "").strip()
    return err.splitlines()[-1][:200] if err else "NO REASON"


def check_failed(result: ParseResult) -> Check:
    """Failed and fenced invocations, each with its reason."""
    r = result
    bad = [i for i in r.invocations if i.get("status") in ("failed", "fenced")]
    details = [f"{i['trace_id']} attempt {i.get('attempt')} on {i.get('node_id')} [{i['status']}]: {_reason(i)}"
               for i in bad[:50]]
    if len(bad) > 50:
        details.append(f"... and {len(bad) - 50} more (see invocations.jsonl, field error)")
    no_reason = sum(1 for i in bad if not i.get("error"))
    verdict = FAIL if no_reason else WARN if any(i["status"] == "failed" for i in bad) else PASS
    return Check("Failed tasks", verdict, f"{sum(1 for i in bad if i['status'] == 'failed')} failed, "
                 f"{sum(1 for i in bad if i['status'] == 'fenced')} fenced, {no_reason} without a reason", details)


def check_imported(result: ParseResult) -> Check | None:
    """Data imported from the original Tracekit (``imported.json`` beside the node folders, written by
    ``legacy_io.import_original``): what was recovered, estimated, assumed and what is unrecoverable. None for a run
    of this toolkit. WARN: the old data lacks what the checks above take for granted (docs/traces.md)."""
    try:
        note = json.loads((result.run_dir / legacy.IMPORT_NOTE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict):
        return None
    summary = note.get("summary") if isinstance(note.get("summary"), dict) else {}
    lost = summary.get("unrecoverable") or {}
    details = [f"{kind}: {text}: {n}" for kind in ("recovered", "estimated", "assumed", "unrecoverable")
               for text, n in (summary.get(kind) or {}).items()]
    return Check("Imported data (original Tracekit)", WARN,
                 f"{note.get('executions', 0)} execution(s) from {note.get('source')}; unrecoverable: "
                 + ("; ".join(f"{t.split(' (')[0]} {n}" for t, n in lost.items()) or "nothing"), details)


def run_checks(result: ParseResult) -> list[Check]:
    """Every audit check (the list in docs/traces.md), in report order."""
    r = result
    checks = [check_inputs(r), check_nodes(r), check_fields(r), check_temporal(r), check_xref(r), check_cpu(r),
              check_capacity(r), check_fifo(r), check_outcomes(r), check_failed(r), *check_requests(r)]
    imported = check_imported(r)
    return checks if imported is None else [*checks, imported]


def check_requests(result: ParseResult) -> list[Check]:
    """Service runs only (docs/services.md): requests linked to their service, latency percentiles, throughput,
    error rate per service; no check at all for a run without requests."""
    services = requests.read_cts(result.out_dir)
    if not services:
        return []
    verdict, summary, details = requests.verdict(services)
    return [Check("Requests", verdict, summary, details)]


def queue_wait_stats(result: ParseResult) -> str:
    r = result
    waits = [i["ts_start"] - i["ts_enqueue"] for i in r.invocations
             if i.get("status") == "ok" and i.get("ts_start") is not None and i.get("ts_enqueue") is not None]
    if not waits:
        return "no successful task with ts_enqueue"
    waits.sort()
    p95 = waits[min(len(waits) - 1, int(0.95 * len(waits)))]
    return (f"{len(waits)} task(s): median {statistics.median(waits) / 1000:.3f} s, p95 {p95 / 1000:.3f} s, "
            f"max {waits[-1] / 1000:.3f} s")


STAGE_LABELS = ("queue", "check", "bind", "fork", "sentinel", "exec")  # the gaps between schema.LAUNCH_STAGES


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def launch_overhead(result: ParseResult) -> list[str]:
    """Markdown lines: per node, p50/p95 of ``ts_start - ts_dispatch``, its share of slot time (dispatch to end)
    and the median of each launch stage (docs/traces.md "Launch overhead")."""
    by_node: dict[str, list[dict]] = defaultdict(list)
    for la in result.launches:
        if la["ts_dispatch"] is not None and la["ts_start"] is not None:
            by_node[la["node_id"]].append(la)
    if not by_node:
        return ["no exec event with ts_dispatch and ts_start"]
    lines = ["| node | tasks | launch path | p50 ms | p95 ms | max ms | share of slot time | "
             + " | ".join(f"{s} ms" for s in STAGE_LABELS) + " |", "|---" * (7 + len(STAGE_LABELS)) + "|"]
    for node in sorted(by_node):
        las = by_node[node]
        over = [la["ts_start"] - la["ts_dispatch"] for la in las]
        slot = sum(max(la["ts_end"] - la["ts_dispatch"], 0) for la in las if la["ts_end"] is not None)
        share = f"{100 * sum(max(o, 0) for o in over) / slot:.1f} %" if slot > 0 else "-"
        stages = []
        for a, b in zip(LAUNCH_STAGES, LAUNCH_STAGES[1:]):
            gaps = [la[b] - la[a] for la in las if la[a] is not None and la[b] is not None]
            stages.append(f"{statistics.median(gaps):.1f}" if gaps else "-")
        lpaths = Counter(la["launch_path"] or "stand-alone" for la in las)
        lines.append(f"| `{node}` | {len(las)} | {', '.join(f'{k} {v}' for k, v in sorted(lpaths.items()))} | "
                     f"{_pct(over, 0.5):.1f} | {_pct(over, 0.95):.1f} | {max(over):.1f} | {share} | "
                     + " | ".join(stages) + " |")
    return lines


def render(result: ParseResult, checks: list[Check], plots: dict[str, str] | None = None) -> str:
    """Markdown of the audit report (deterministic: no wall-clock stamps)."""
    r = result
    overall = _worst(*(c.verdict for c in checks))
    lines = [f"# Audit report — {r.run_dir.name}", "",
             f"Overall: **{overall}** ({sum(c.verdict == FAIL for c in checks)} FAIL, "
             f"{sum(c.verdict == WARN for c in checks)} WARN, {sum(c.verdict == PASS for c in checks)} PASS)", "",
             f"Nodes: {', '.join(n.node_id for n in r.nodes)}. Invocations: {len(r.invocations)}. "
             f"proc_metrics rows: {r.rows_written}. Queue wait: {queue_wait_stats(r)}.", "",
             "| check | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.verdict} | {c.summary.replace('|', '/')} |" for c in checks]
    lines += ["", "## Launch overhead", "",
              "Placement (`ts_dispatch`) to the application's exec (`ts_start`), per node, and where the time goes: "
              "queue = dispatch to taken from q:<node>, check = payload checked, bind = binding ready, fork = the "
              "adapter runs (launcher fork, or a fresh interpreter), sentinel = PID sentinel written, exec = exec "
              "(stage medians).", ""]
    lines += launch_overhead(r)
    for c in checks:
        lines += ["", f"## {c.name}: {c.verdict}", "", c.summary]
        if c.details:
            lines.append("")
            lines += [f"- {d}" for d in c.details]
    if plots:
        lines += ["", "## Plots", ""]
        for title, fname in plots.items():
            lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: ParseResult, checks: list[Check], plots: dict[str, str] | None = None) -> Path:
    """Write ``audit_report.md`` next to the CTS files; returns its path."""
    r = result
    path = r.out_dir / REPORT
    tmp = path.with_name(REPORT + ".tmp")
    tmp.write_text(render(r, checks, plots))
    tmp.replace(path)
    return path


def overall(checks: list[Check]) -> str:
    """PASS / WARN / FAIL over all checks."""
    return _worst(*(c.verdict for c in checks))


def parse_and_audit(run_dir: Path, out_dir: Path | None = None, with_plots: bool = True,
                    progress: bool = False) -> tuple[ParseResult, list[Check], Path]:
    """The whole ``make parse``: raw logs -> CTS files, plots, ``audit_report.md``."""
    with no_cyclic_gc():  # the checks and plots walk the run's long-lived containers too
        return _parse_and_audit(run_dir, out_dir, with_plots, progress)


def _parse_and_audit(run_dir: Path, out_dir: Path | None, with_plots: bool,
                     progress: bool) -> tuple[ParseResult, list[Check], Path]:
    r = parse_run(run_dir, out_dir, progress=progress)
    requests.write_cts(r)  # CTS/requests.jsonl of a service run (nothing otherwise), before checks and plots
    figs = None
    if not with_plots:
        return r, (checks := run_checks(r)), write_report(r, checks, figs)
    from tracekit.trace.plots import write_plots

    child = _fork(lambda: write_plots(r))  # the plots draw on the other core while the checks run
    checks = run_checks(r)
    if child is None or os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
        figs = write_plots(r)  # no fork here, or it failed: draw here (so an error surfaces as usual)
    else:
        figs = write_plots(r, draw=False)
    return r, checks, write_report(r, checks, figs)


def _fork(work) -> int | None:
    """Run ``work()`` in a forked child; its pid (exit status 0 = done), or None where forking is not possible."""
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        return None
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # silent: the parent re-runs a failure and reports it
            work()
            code = 0
        finally:
            os._exit(code)
    return pid
