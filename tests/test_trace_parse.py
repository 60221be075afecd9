"""CTS parse/merge + audit on synthetic raw logs (exact raw formats, known ground truth)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from oracles import sql_engine
from tracekit.cluster import synthlogs
from tracekit.cluster.synthlogs import SynthSpec
from tracekit.core import schema
from tracekit.trace import audit, cts, vocabulary
from tracekit.trace.intervals import round_ms


def read_cts(cts_dir: Path) -> tuple[list[dict], list[dict]]:
    invs = [json.loads(x) for x in (cts_dir / "invocations.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (cts_dir / "proc_metrics.jsonl").read_text().splitlines()]
    return invs, rows


def check_cts_invariants(cts_dir: Path) -> tuple[list[dict], list[dict]]:
    """The CTS invariants (docs/internals.md, CTS), checked independently of the parser's own bookkeeping."""
    invs, rows = read_cts(cts_dir)
    assert all(tuple(i) == schema.INVOCATION_FIELDS for i in invs)
    assert all(tuple(r) == schema.PROC_METRIC_FIELDS for r in rows)
    assert all(tuple(n) == schema.NODE_FIELDS for n in json.loads((cts_dir / "nodes.json").read_text()))
    by_task = defaultdict(list)
    order = []
    for r in rows:
        key = (r["node_id"], r["trace_id"], r["attempt"])
        if not by_task[key]:
            order.append(key)
        by_task[key].append(r)
    assert len(order) == len(by_task), "rows of one task are one contiguous block"
    executed = [i for i in invs if i["pid"] is not None]
    exec_order = [(i["node_id"], i["trace_id"], i["attempt"]) for i in executed]
    assert order == exec_order, "blocks follow the invocation order"
    for inv in executed:
        rs = by_task[(inv["node_id"], inv["trace_id"], inv["attempt"])]
        assert rs, f"task {inv['trace_id']} has no rows"
        assert rs[0]["ts_ms"] - rs[0]["dt_ms"] == inv["ts_start"]
        assert rs[-1]["ts_ms"] == inv["ts_end"]
        for a, b in zip(rs, rs[1:]):
            assert b["ts_ms"] - b["dt_ms"] == a["ts_ms"]
        assert all(r["dt_ms"] > 0 and r["cpu_ms"] >= 0 for r in rs)
        assert all(isinstance(r["ts_ms"], int) for r in rs)
        assert sum(r["cpu_ms"] for r in rs) == pytest.approx(inv["cpu_ms"], abs=1e-6 * len(rs))
        assert all((r["pid"], r["starttime"]) == (inv["pid"], inv["starttime"]) for r in rs)
    keys = [vocabulary.invocation_order_key(i) for i in invs]
    assert keys == sorted(keys)
    return invs, rows


@pytest.fixture
def synth(tmp_path):
    def make(**kw):
        return synthlogs.generate(tmp_path / "run", SynthSpec(**kw))
    return make


def test_parse_matches_ground_truth_with_clock_offsets(synth):
    truth = synth(nodes=3, tasks=30, clock_offsets_ms=(0.0, 250.5, -1234.25))
    r = cts.parse_run(truth.run_dir)
    invs, rows = check_cts_invariants(r.out_dir)
    got = {(i["node_id"], i["trace_id"], i["attempt"]): i for i in invs}
    assert len(got) == len(truth.tasks) == 30
    for t in truth.tasks:  # truth is in the controller time base: offsets must have been applied
        inv = got[(t["node_id"], t["trace_id"], t["attempt"])]
        assert inv["ts_start"] == round_ms(round(t["start"] - t["offset"], 3) + t["offset"])
        assert abs(inv["ts_start"] - t["start"]) <= 1 and abs(inv["ts_end"] - t["end"]) <= 1
        assert inv["cpu_ms"] == pytest.approx(t["cpu_ms"], abs=1e-9)
        assert inv["ts_enqueue"] == t["ts_enqueue"] and inv["status"] == "ok"
    assert r.samples_read == truth.samples and r.bad.count == 0 and r.orphan_samples == 0
    checks = {c.name: c for c in audit.run_checks(r)}
    assert all(c.verdict == audit.PASS for c in checks.values()), [(c.name, c.summary) for c in checks.values()]


def test_multi_node_merge_with_the_same_pids(synth):
    truth = synth(nodes=2, tasks=24, same_pids=True)
    procs = defaultdict(set)
    for t in truth.tasks:
        procs[(t["pid"], t["starttime"])].add(t["node_id"])
    assert any(len(n) == 2 for n in procs.values()), "the generator must produce colliding (pid, starttime)"
    r = cts.parse_run(truth.run_dir)
    invs, rows = check_cts_invariants(r.out_dir)
    tid_of = {(i["node_id"], i["pid"], i["starttime"]): i["trace_id"] for i in invs}
    assert all(tid_of[(x["node_id"], x["pid"], x["starttime"])] == x["trace_id"] for x in rows)
    assert {i["node_id"] for i in invs} == {"node01", "node02"}
    assert r.trace_mismatch == 0 and r.orphan_samples == 0


def test_rerun_is_byte_identical(synth):
    truth = synth(tasks=15, failed=1, fenced=1, rejects=1)
    audit.parse_and_audit(truth.run_dir)
    out = truth.run_dir / "CTS"

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}

    first = files()
    audit.parse_and_audit(truth.run_dir)
    assert files() == first
    assert set(first) == {"invocations.jsonl", "proc_metrics.jsonl", "nodes.json", "processes.jsonl", "audit_report.md",
                          "gantt.png",
                          "cpu_utilisation.png", "queue_wait.png"}, "no scratch or temporary file is left behind"
    from tracekit.trace import rowcache

    hidden = {p.name for p in out.iterdir() if p.name.startswith(".")}
    assert hidden <= {rowcache.ROWS_CACHE, rowcache.ROWS_CACHE_META}, "only the export's row cache"


def test_malformed_and_truncated_lines_are_counted_with_file_and_line(synth):
    truth = synth(tasks=12, malformed=True)
    (truth.run_dir / "node01" / "samples.jsonl").open("a").write("\n\x00\xff garbage\n[1,2]\n")
    r = cts.parse_run(truth.run_dir)
    check_cts_invariants(r.out_dir)
    assert r.bad.count == truth.bad_lines + 2  # the garbage line and the non-object line
    assert any("samples.jsonl" in e and "truncated line" in e for e in r.bad.examples)
    assert any(e.startswith(str(truth.run_dir / "node01" / "events.jsonl") + ":") for e in r.bad.examples)
    c = audit.check_inputs(r)
    assert c.verdict == audit.WARN and str(r.bad.count) in c.summary


def test_failed_rejected_and_fenced_invocations(synth):
    truth = synth(nodes=2, tasks=16, failed=1, rejects=2, fenced=1)
    r = cts.parse_run(truth.run_dir)
    invs, _ = check_cts_invariants(r.out_dir)
    status = defaultdict(list)
    for i in invs:
        status[i["status"]].append(i)
    assert len(status["fenced"]) == 1 and status["fenced"][0]["attempt"] == 1
    rejects = [i for i in status["failed"] if i["pid"] is None]
    assert len(rejects) == 2 and all(i["error"] == "input not inside the inputs root" for i in rejects)
    assert all(i["ts_enqueue"] is not None and i["cpu_units"] is not None for i in rejects), "filled from dispatch"
    ran_failed = [i for i in status["failed"] if i["pid"] is not None]
    assert len(ran_failed) == 1 and "exited 1" in ran_failed[0]["error"]
    checks = {c.name: c for c in audit.run_checks(r)}
    assert checks["Outcomes (exactly one success per task)"].verdict == audit.PASS
    assert checks["Failed tasks"].verdict == audit.WARN
    assert "3 failed, 1 fenced" in checks["Failed tasks"].summary


def test_cgroup_counters_are_preferred(synth):
    truth = synth(tasks=8, cgroup=True)
    r = cts.parse_run(truth.run_dir)
    invs, _ = check_cts_invariants(r.out_dir)
    exact = {(t["node_id"], t["trace_id"]): t["cg_cpu_us"] / 1000 for t in truth.tasks}
    assert all(i["cpu_ms"] == pytest.approx(exact[(i["node_id"], i["trace_id"])]) for i in invs)
    assert set(r.cpu_source.values()) == {"cgroup"}


def test_tasks_without_samples_get_one_row_and_are_flagged(synth):
    truth = synth(tasks=10, no_sample_tasks=2)
    r = cts.parse_run(truth.run_dir)
    invs, rows = check_cts_invariants(r.out_dir)
    lonely = [t for t in truth.tasks if not t["has_samples"]]
    for t in lonely:
        mine = [x for x in rows if x["trace_id"] == t["trace_id"]]
        assert len(mine) == 1 and mine[0]["cpu_ms"] == pytest.approx(t["cpu_ms"])
    c = audit.check_xref(r)
    assert c.verdict == audit.FAIL and "task without samples" in "\n".join(c.details)
    assert all(t["trace_id"] in "\n".join(c.details) for t in lonely)


def test_missing_metadata_defaults_are_reported(synth):
    truth = synth(tasks=6, nodes=1)
    (truth.run_dir / "node01" / "node.json").unlink()
    (truth.run_dir / "node01" / "worker.json").unlink()
    r = cts.parse_run(truth.run_dir)
    check_cts_invariants(r.out_dir)
    c = audit.check_nodes(r)
    text = "\n".join(c.details)
    assert c.verdict != audit.PASS and "clock offset (0 assumed)" in text and "clk_tck" in text
    assert audit.check_capacity(r).verdict == audit.WARN


def test_audit_detects_capacity_fifo_lost_and_orphans(synth):
    truth = synth(nodes=2, tasks=20)
    run = truth.run_dir
    w = json.loads((run / "node01" / "worker.json").read_text())
    w["capacity"] = 1
    (run / "node01" / "worker.json").write_text(json.dumps(w))
    pl = (run / "placements.jsonl").read_text().splitlines()
    pl[2], pl[5] = pl[5], pl[2]
    (run / "placements.jsonl").write_text("\n".join(pl) + "\n")
    ev = (run / "node02" / "events.jsonl").read_text().splitlines()
    lost = json.loads(ev[0])["trace_id"]
    (run / "node02" / "events.jsonl").write_text("\n".join(ev[1:]) + "\n")
    with open(run / "node02" / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"ts": 1.9e12, "mono": 1.0, "procs": [[99999, 1, "ghost", 5, 5, None, None]]}) + "\n")
    r = cts.parse_run(run)
    checks = {c.name: c for c in audit.run_checks(r)}
    assert checks["Capacity"].verdict == audit.FAIL and "EXCEEDED" in "\n".join(checks["Capacity"].details)
    assert checks["FIFO order"].verdict == audit.FAIL
    assert "out of dispatch order" in checks["FIFO order"].summary and "0 out" not in checks["FIFO order"].summary
    out = checks["Outcomes (exactly one success per task)"]
    assert out.verdict == audit.FAIL and lost in "\n".join(out.details)
    xref = "\n".join(checks["Cross-reference"].details)
    assert checks["Cross-reference"].verdict == audit.FAIL and "unknown to the run" in xref
    assert "left no exec event" in xref and lost in xref, "the lost task's samples are reported, not hidden"


def test_samples_of_a_killed_execution_are_a_warning(synth):
    truth = synth(nodes=1, tasks=6)
    ev = (truth.run_dir / "node01" / "events.jsonl").read_text().splitlines()
    (truth.run_dir / "node01" / "events.jsonl").write_text("\n".join(ev[1:]) + "\n")  # adapter died: no exec
    r = cts.parse_run(truth.run_dir)
    c = audit.check_xref(r)
    assert c.verdict == audit.WARN and "left no exec event" in "\n".join(c.details)


def test_cli_strict_exit_codes_report_and_plots(synth, tmp_path):
    truth = synth(tasks=10)
    p = run_script("parse_cts.py", "--input", str(truth.run_dir), "--strict", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "audit: PASS" in p.stdout
    report = (truth.run_dir / "CTS" / "audit_report.md").read_text()
    for png in ("gantt.png", "cpu_utilisation.png", "queue_wait.png"):
        assert f"]({png})" in report
        assert (truth.run_dir / "CTS" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Capacity | PASS |" in report
    # make one check fail: a sample without a task -> exit 1 only with --strict
    with open(truth.run_dir / "node01" / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"ts": 1.9e12, "mono": 1.0, "procs": [[4, 4, "x", 1, 1, None, None]]}) + "\n")
    assert run_script("parse_cts.py", "--input", str(truth.run_dir), "--no-plots").returncode == 0
    p = run_script("parse_cts.py", "--input", str(truth.run_dir), "--strict", "--no-plots")
    assert p.returncode == 1 and "FAIL Cross-reference" in p.stdout


def test_cli_bad_input_is_one_line_error(tmp_path):
    p = run_script("parse_cts.py", "--input", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no such run folder" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run_script("parse_cts.py", "--input", str(tmp_path / "empty"))
    assert p.returncode == 2 and "no node folders" in p.stderr and "Traceback" not in p.stderr
    assert run_script("parse_cts.py", "--help").returncode == 0


def test_run_id_resolution_uses_logs_root(synth, tmp_path, monkeypatch):
    truth = synth(tasks=4)
    env = {"PATH": "/usr/bin:/bin", "TRACEKIT_LOGS": str(truth.run_dir.parent)}
    p = run_script("parse_cts.py", "--run-id", truth.run_dir.name, "--no-plots", env=env)
    assert p.returncode == 0, p.stderr
    assert (truth.run_dir / "CTS" / "invocations.jsonl").exists()
    (truth.run_dir / "CTS" / "invocations.jsonl").unlink()
    p = run_script("parse_cts.py", "--logs", str(truth.run_dir), "--no-plots", env=env)  # a run folder works too
    assert p.returncode == 0, p.stderr
    assert (truth.run_dir / "CTS" / "invocations.jsonl").exists()


@pytest.mark.parametrize("spec", [
    dict(nodes=3, tasks=40, clock_offsets_ms=(0.0, 250.5, -1234.25), failed=2, fenced=1, rejects=2,
         no_sample_tasks=2, malformed=True),
    dict(nodes=2, tasks=30, cgroup=True, same_pids=True),
])
def test_two_independent_engines_write_identical_files(tmp_path, spec):
    """The product's parse and the SQL re-implementation (tests/oracles/sql_engine.py) must agree byte for byte
    (an independent check)."""
    if not sql_engine.available():
        pytest.skip("duckdb is not installed")
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(**spec))
    with open(truth.run_dir / "node01" / "samples.jsonl", "a") as fh:  # a clock step back and an orphan
        fh.write(json.dumps({"ts": 1.0e12, "mono": 1.0, "procs": [[4, 4, "x", 1, 1, None, None]]}) + "\n")
        fh.write(json.dumps({"ts": 1.9e12, "mono": 2.0, "procs": [[5, 5, "ghost", 1, 1, None, None], [1, 2]]}) + "\n")
        for k in range(3):  # a process matched by name (no trace_id, no exec event): processes.jsonl
            fh.write(json.dumps({"ts": 1.9e12 + 100 * (k + 1), "mono": 3.0 + k, "procs": [
                [77, 770, None, 10 + 7 * k, 5 + k, None, None, "nginx", "ab" * 32]]}) + "\n")
    reports = {}
    for engine, parse_run in (("python", cts.parse_run), ("duckdb", sql_engine.parse_run)):
        r = parse_run(truth.run_dir, tmp_path / engine)
        reports[engine] = audit.render(r, audit.run_checks(r))
        check_cts_invariants(tmp_path / engine)
    for name in ("invocations.jsonl", "proc_metrics.jsonl", "nodes.json", "processes.jsonl"):
        assert (tmp_path / "python" / name).read_bytes() == (tmp_path / "duckdb" / name).read_bytes(), name
    assert '"comm":"nginx"' in (tmp_path / "python" / "processes.jsonl").read_text()
    assert reports["python"].replace(str(tmp_path / "python"), "X") == \
        reports["duckdb"].replace(str(tmp_path / "duckdb"), "X")
    assert "ghost" in reports["python"] and "sample entry is not a list" in reports["python"]


def test_exec_events_without_starttime_match_samples_by_pid_and_window(synth, tmp_path):
    """The worker's fallback (no adapter) records no starttime: samples still attach by pid inside the run."""
    truth = synth(nodes=1, tasks=8)
    path = truth.run_dir / "node01" / "events.jsonl"
    evs = [json.loads(x) for x in path.read_text().splitlines()]
    for ev in evs:
        ev.pop("starttime", None)
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))
    r = cts.parse_run(truth.run_dir, tmp_path / "py")
    invs, rows = check_cts_invariants(tmp_path / "py")
    assert r.orphan_samples == 0 and all(i["starttime"] is None for i in invs)
    assert sum(r.task_samples.values()) == truth.samples
    assert audit.check_fields(r).verdict == audit.WARN  # starttime is expected, not required
    if sql_engine.available():
        sql_engine.parse_run(truth.run_dir, tmp_path / "sql")
        assert (tmp_path / "py" / "proc_metrics.jsonl").read_bytes() == \
            (tmp_path / "sql" / "proc_metrics.jsonl").read_bytes()


def test_synthlogs_cli_writes_a_parsable_run(tmp_path, capsys):
    assert synthlogs.main(["--out", str(tmp_path / "s"), "--samples", "3000", "--malformed"]) == 0
    assert "sample(s)" in capsys.readouterr().out
    r = cts.parse_run(tmp_path / "s")
    check_cts_invariants(r.out_dir)
    assert r.bad.count > 0 and r.samples_read > 2000


@pytest.mark.parametrize("spec", [
    dict(nodes=3, tasks=40, clock_offsets_ms=(0.0, 250.5, -1234.25), failed=2, fenced=1, rejects=2, no_sample_tasks=2),
    dict(nodes=2, tasks=60, cgroup=True, seed=7, task_ms=(10, 5000), interval_ms=50),
    dict(nodes=2, tasks=30, malformed=True),
])
def test_columnar_and_streaming_readers_write_identical_files(tmp_path, spec, monkeypatch):
    """The columnar fast path (DuckDB + numpy) must write what the streaming reference writes, byte for byte,
    including the samples it hands to the reference's matching (orphans, a clock step back, a sample without
    starttime) and the malformed lines it reports; a file it cannot read exactly (a blank line before an orphan's
    line number, a tick it cannot decode) is left to the streaming reader, which says so."""
    from tracekit.trace import columnar

    if not columnar.available():
        pytest.skip("duckdb is not installed")
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(**spec))
    if not spec.get("malformed"):
        with open(truth.run_dir / "node01" / "samples.jsonl", "a") as fh:
            fh.write(json.dumps({"ts": 1.0e12, "mono": 1.0, "procs": [[4, 4, "x", 1, 1, None, None]]}) + "\n")
            fh.write(json.dumps({"ts": 1.9e12, "mono": 2.0, "procs": [[5, 5, "ghost", 1, 1, None, None],
                                                                      [5, None, None, 1, 2, 3, 4]]}) + "\n")
        for node in ("node01", "node02"):  # a blank line: it only matters where a line number is reported
            path = truth.run_dir / node / "samples.jsonl"
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(lines[:5] + ["\n"] + lines[5:]))
    results = {}
    for use_columnar in (True, False):
        monkeypatch.setattr(cts, "COLUMNAR", use_columnar)
        r = cts.parse_run(truth.run_dir, tmp_path / str(use_columnar))
        report = audit.render(r, audit.run_checks(r))
        results[use_columnar] = (r, report.replace(str(tmp_path / str(use_columnar)), "X"))
    for name in ("invocations.jsonl", "proc_metrics.jsonl", "nodes.json"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes(), name
    assert results[True][1] == results[False][1]
    fast, ref = results[True][0], results[False][0]
    assert (fast.samples_read, fast.orphan_samples, fast.untracked_samples) == \
        (ref.samples_read, ref.orphan_samples, ref.untracked_samples)
    assert ref.reader_notes == []
    if spec.get("malformed"):  # garbage and truncated lines: reported by the columnar reader the same way
        assert fast.reader_notes == [] and fast.bad.count == ref.bad.count > 0
    else:
        assert len(fast.reader_notes) == 1 and "node01" in fast.reader_notes[0], "orphans need exact line numbers"
        assert fast.orphan_samples == 1 and fast.untracked_samples == 1
        assert fast.non_monotonic_ticks["node01"] == 1


def test_gantt_of_a_big_node_is_drawn_as_an_image_with_every_profile(synth, tmp_path, monkeypatch):
    """Beyond RASTER_OVER tasks a node's lanes are an image: still one colour per profile, no bar objects."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from tracekit.trace import plots

    truth = synth(nodes=2, tasks=40)
    r = cts.parse_run(truth.run_dir)
    monkeypatch.setattr(plots, "RASTER_OVER", 5)
    drawn = []
    monkeypatch.setattr(plots, "_gantt_bars", lambda *a, **k: drawn.append("bars"))
    plots.gantt(r, tmp_path / "g.png")
    assert drawn == [], "every node above RASTER_OVER is an image"
    img = mpimg.imread(tmp_path / "g.png")[..., :3]
    profiles = sorted({str(i["profile"]) for i in r.invocations if i["pid"] is not None})
    cmap = plt.get_cmap("tab10")
    for k, p in enumerate(profiles):
        want = np.array(cmap(k % 10)[:3])
        assert (np.abs(img - want).max(axis=-1) < 0.02).sum() > 50, f"profile {p} not visible"


def test_columnar_line_parts_equal_the_reference_template():
    """The columnar path builds every task's constant line text at once; it must equal the reference's, escapes,
    unicode, nulls, booleans and printf-looking text included."""
    from tracekit.trace.columnar import const_parts

    invs = [dict(pid=5, node_id="n1", trace_id='tr"q\\', attempt=1, starttime=None),
            dict(pid=7, node_id="n1", trace_id="é%s\t", attempt=None, starttime=12),
            dict(pid=8, node_id="n1", trace_id="abc", attempt=2, starttime=3),
            dict(pid=True, node_id="n2", trace_id=None, attempt=2.5, starttime=3)]
    for sub in (invs, invs[2:3], invs[2:], [invs[2], dict(invs[2], pid=9)]):
        parts = const_parts(sub)
        for j, inv in enumerate(sub):
            assert [p if isinstance(p, str) else p[j].as_py() for p in parts] == vocabulary.row_template_parts(inv)


@pytest.mark.parametrize("extra, stays_columnar", [
    (['[1, 2]', '{"ts": "5", "procs": []}', '{"ts": 1}', '{"ts": 2, "procs": null}', '{"ts": 3, "pro'], True),
    (['{"ts": TS, "procs": [5, [1, 2]]}', ''], False),  # a tick whose entries only the streaming reader can judge
    (['  ', '{"ts": 3, "pro'], False),  # a blank line before a reported one: line numbers are the reference's job
])
def test_columnar_reader_reports_bad_lines_like_the_reference(tmp_path, monkeypatch, extra, stays_columnar):
    from tracekit.trace import columnar

    if not columnar.available():
        pytest.skip("duckdb is not installed")
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(nodes=1, tasks=12))
    path = truth.run_dir / "node01" / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    ts = str(json.loads(lines[6])["ts"])  # the previous tick's time: in order
    path.write_text("".join(lines[:7] + [x.replace("TS", ts) + "\n" for x in extra[:-1]] + lines[7:]) + extra[-1])
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(cts, "COLUMNAR", flag)
        r = cts.parse_run(truth.run_dir, tmp_path / str(flag))
        out[flag] = (r.bad.count, r.bad.examples, (tmp_path / str(flag) / "proc_metrics.jsonl").read_bytes(),
                     r.reader_notes)
    assert out[True][:3] == out[False][:3]
    assert out[False][0] > 0
    assert (out[True][3] == []) is stays_columnar
