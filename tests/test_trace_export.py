"""OpenDC export: exact parquet schema vs OpenDC's own test trace, round-trip totals, ordering, CLI, timeline."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_script
from tracekit.cluster import synthlogs
from tracekit.cluster.synthlogs import SynthSpec
from tracekit.core.errors import BadInput, UsageError
from tracekit.trace import audit, cts, reader, rowcache, vocabulary
from tracekit.trace.export import opendc, perfetto

GOLDEN = Path("/work/shared/opendc_examples/bitbrains-small")


@pytest.fixture
def parsed(tmp_path):
    def make(**kw):
        truth = synthlogs.generate(tmp_path / "run", SynthSpec(**kw))
        audit.parse_and_audit(truth.run_dir, with_plots=False)
        return truth
    return make


def _columns(path: Path) -> dict:
    """name -> (physical type, logical type, required) from the parquet footer."""
    sch = pq.ParquetFile(path).schema
    out = {}
    for i in range(len(sch)):
        c = sch.column(i)
        out[c.name] = (c.physical_type, str(c.logical_type), c.max_definition_level == 0)
    return out


@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden OpenDC trace not present at {GOLDEN}")
def test_schema_matches_opendc_golden_trace(parsed, tmp_path):
    truth = parsed(tasks=12)
    opendc.export(truth.run_dir, tmp_path / "od")
    for name in ("tasks.parquet", "fragments.parquet"):
        gold, ours = _columns(GOLDEN / name), _columns(tmp_path / "od" / name)
        assert gold, name
        for col, spec in gold.items():
            assert col in ours, f"{name}: missing column {col}"
            assert ours[col] == spec, f"{name}.{col}: ours {ours[col]} vs OpenDC {spec}"
    # and the arrow schema constants say the same (required = non-nullable)
    assert set(opendc.REQUIRED_TASK_COLUMNS) == set(_columns(GOLDEN / "tasks.parquet"))
    assert set(opendc.REQUIRED_FRAGMENT_COLUMNS) == set(_columns(GOLDEN / "fragments.parquet"))


def test_round_trip_keeps_totals_order_and_grouping(parsed, tmp_path):
    truth = parsed(nodes=3, tasks=40, clock_offsets_ms=(0, 40.0, -75.5), failed=2, fenced=1, rejects=1)
    s = opendc.export(truth.run_dir, tmp_path / "od")
    tasks = pq.read_table(tmp_path / "od" / "tasks.parquet").to_pandas()
    frags = pq.read_table(tmp_path / "od" / "fragments.parquet").to_pandas()
    invs = [json.loads(x) for x in (truth.run_dir / "CTS" / "invocations.jsonl").read_text().splitlines()]
    ok = [i for i in invs if i["status"] == "ok"]
    assert len(tasks) == len(ok) == s.tasks and len(frags) == s.fragments
    assert list(tasks["id"]) == list(range(len(tasks))), "dense ids in CTS order"
    first = tasks[~tasks["name"].isin([i["trace_id"] for i in ok if i["attempt"] > 1])]
    assert list(first["submission_time"]) == sorted(first["submission_time"]), "first attempts in submission order"
    ids = frags["id"].to_numpy()
    assert np.all(np.diff(ids) >= 0), "fragments grouped by task, in task order"
    assert set(ids) == set(tasks["id"]), "every task has fragments"
    per_task = frags.groupby("id")["duration"].sum()
    assert (per_task.reindex(tasks["id"]).to_numpy() == tasks["duration"].to_numpy()).all()
    by_name = {i["trace_id"]: i for i in ok}
    peak_rows: dict = {}
    for x in (truth.run_dir / "CTS" / "proc_metrics.jsonl").read_text().splitlines():
        row = json.loads(x)
        if row["rss_kb"] is not None:
            k = (row["node_id"], row["trace_id"], row["attempt"])
            peak_rows[k] = max(peak_rows.get(k, 0), row["rss_kb"])
    mhz = 2100.0
    for row in tasks.itertuples():
        inv = by_name[row.name]
        # the slot: placement -> capacity release (the controller's release record; synthlogs writes them)
        assert inv["ts_release"] is not None and inv["ts_release"] >= inv["ts_end"] - 1
        assert row.duration == max(inv["ts_release"], inv["ts_end"]) - min(inv["ts_dispatch"], inv["ts_start"])
        if inv["attempt"] == 1:
            assert row.submission_time == inv["ts_enqueue"]
        else:  # a retry is submitted when it was re-queued, after its predecessor was placed
            assert inv["ts_requeue"] is not None and row.submission_time == inv["ts_requeue"] > inv["ts_enqueue"]
        assert row.cpu_count == inv["cpu_units"] and row.cpu_capacity == inv["cpu_units"] * mhz
        assert row.mem_capacity == max(inv["max_rss_kb"], peak_rows.get((inv["node_id"], row.name, inv["attempt"]), 0))
    # round trip: sum of cpu_usage x duration = sum of task CPU ms x MHz (within 0.1%)
    ours = float((frags["cpu_usage"] * frags["duration"]).sum())
    expected = sum(i["cpu_ms"] for i in ok) * mhz
    assert ours == pytest.approx(expected, rel=1e-9), "exact CPU: the ceiling fit moves CPU, never loses it"
    assert ours == pytest.approx(s.mhz_ms, rel=1e-9)
    per_task_cpu = (frags["cpu_usage"] * frags["duration"]).groupby(frags["id"]).sum() / mhz
    assert per_task_cpu.reindex(tasks["id"]).to_numpy() == pytest.approx([by_name[x]["cpu_ms"] for x in tasks["name"]])
    assert (frags["duration"] > 0).all(), "no zero-length fragment"
    ceiling = tasks.set_index("id")["cpu_count"].reindex(frags["id"]).to_numpy() * mhz  # exclusive binding
    assert (frags["cpu_usage"].to_numpy() <= ceiling * (1 + 1e-9)).all() and s.over_ceiling_fragments == 0
    # app alone: the CTS run, no lead/trail
    a = opendc.export(truth.run_dir, tmp_path / "app", app_only=True)
    at = pq.read_table(tmp_path / "app" / "tasks.parquet").to_pandas()
    assert a.app_only and all(r.duration == by_name[r.name]["ts_end"] - by_name[r.name]["ts_start"]
                              for r in at.itertuples())


def test_include_failed_and_fenced_never(parsed, tmp_path):
    truth = parsed(nodes=2, tasks=12, failed=2, fenced=1, rejects=1)
    a = opendc.export(truth.run_dir, tmp_path / "a")
    b = opendc.export(truth.run_dir, tmp_path / "b", include_failed=True)
    assert b.tasks == a.tasks + 2
    key = "fenced (lost or duplicate execution)"
    assert a.skipped[key] == 1 and b.skipped[key] == 1
    names = pq.read_table(tmp_path / "b" / "tasks.parquet")["name"].to_pylist()
    failed = [t["trace_id"] for t in truth.tasks if t["status"] == "failed"]
    assert set(failed) <= set(names)
    # lost attempts: the fenced attempt 1, with its slot until the controller re-queued the task
    c = opendc.export(truth.run_dir, tmp_path / "c", include_lost=True, include_failed=True)
    assert c.tasks == b.tasks + 1 and c.lost_attempts == 1 and c.retries == 1 and not c.skipped[key]
    t = pq.read_table(tmp_path / "c" / "tasks.parquet").to_pandas()
    lost = next(x for x in truth.tasks if x["status"] == "fenced")
    rows = t[t["name"] == lost["trace_id"]].sort_values("submission_time")
    assert len(rows) == 2 and rows["submission_time"].iloc[0] == lost["ts_enqueue"]
    assert rows["submission_time"].iloc[1] >= lost["ts_dispatch"], "the retry is submitted after attempt 1 was placed"


def test_mhz_comes_from_metadata_or_flag_never_a_constant(parsed, tmp_path):
    truth = parsed(tasks=6, cpu_freq_mhz=None)
    with pytest.raises(UsageError, match="--cpu-freq-mhz"):
        opendc.export(truth.run_dir, tmp_path / "x")
    p = run_script("export_opendc.py", "--input", str(truth.run_dir), "--output", str(tmp_path / "x"))
    assert p.returncode == 2 and "--cpu-freq-mhz" in p.stderr and "Traceback" not in p.stderr
    p = run_script("export_opendc.py", "--input", str(truth.run_dir), "--output", str(tmp_path / "y"),
                   "--cpu-freq-mhz", "3000")
    assert p.returncode == 0, p.stderr
    assert "tasks 6" in p.stdout and "CPU-hours" in p.stdout and "time span" in p.stdout
    t = pq.read_table(tmp_path / "y" / "tasks.parquet").to_pandas()
    assert (t["cpu_capacity"] == t["cpu_count"] * 3000.0).all()


def test_topology_has_a_host_per_node_and_the_experiment_points_at_files(parsed, tmp_path):
    truth = parsed(nodes=3, tasks=18)
    nodes_json = truth.run_dir / "CTS" / "nodes.json"
    nodes = json.loads(nodes_json.read_text())
    nodes[2]["cpu_cores"] = 8
    nodes_json.write_text(json.dumps(nodes))
    opendc.export(truth.run_dir, tmp_path / "od")
    topo = json.loads((tmp_path / "od" / "topology.json").read_text())
    assert json.loads((tmp_path / "od" / "small_datacenter.json").read_text()) == topo
    hosts = topo["clusters"][0]["hosts"]
    assert [(h["name"], h["count"], h["cpu"]["coreCount"]) for h in hosts] == [
        ("node01", 1, 4), ("node02", 1, 4), ("node03", 1, 8)]
    assert all(h["cpu"]["coreSpeed"] == "2.1 GHz" and h["memory"]["size"].endswith("iB") for h in hosts)
    exp = json.loads((tmp_path / "od" / "experiment.json").read_text())
    base = tmp_path / "od"  # every path in the experiment is relative to the experiment file
    assert (base / exp["topologies"][0]["importFrom"]).is_file()
    wl = exp["workloads"][0]
    assert wl["type"] == "trace" and wl["source"]["type"] == "uri" and wl["scalingPolicy"] == "NoDelay"
    assert (base / wl["source"]["uri"] / "tasks.parquet").is_file()
    assert (base / wl["source"]["uri"] / "fragments.parquet").is_file()
    # synthlogs places first-fit with capacity 4 on 4 cores: ratio 1 (node03's 8 cores: no single ratio, noted)
    assert exp["allocationPolicies"] == [opendc.allocation_policy("", "min", 1.0)]


def test_export_parses_raw_logs_when_no_cts_yet(tmp_path):
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(tasks=5))
    s = opendc.export(truth.run_dir, tmp_path / "od")
    assert s.tasks == 5 and any("parsed the raw logs" in n for n in s.notes)
    assert (truth.run_dir / "CTS" / "audit_report.md").exists()


def test_row_order_does_not_matter_and_broken_cts_is_a_clear_error(parsed, tmp_path):
    truth = parsed(tasks=10)
    opendc.export(truth.run_dir, tmp_path / "a")
    pm = truth.run_dir / "CTS" / "proc_metrics.jsonl"
    lines = pm.read_text().splitlines()
    random.Random(3).shuffle(lines)
    pm.write_text("\n".join(lines) + "\n")
    opendc.export(truth.run_dir, tmp_path / "b")
    for name in ("tasks.parquet", "fragments.parquet"):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    pm.write_text(lines[0] + "\n" + '{"ts_ms": "x", "dt_ms": \n')
    with pytest.raises(BadInput, match="re-run make parse"):
        opendc.export(truth.run_dir, tmp_path / "c")
    assert not (tmp_path / "c" / "fragments.parquet").exists(), "no half-written trace"
    assert not list((tmp_path / "c").glob("*.tmp")) and not (tmp_path / "c" / ".export-spill").exists()
    p = run_script("export_opendc.py", "--input", str(truth.run_dir), "--output", str(tmp_path / "c"))
    assert p.returncode == 2 and "re-run make parse" in p.stderr and "Traceback" not in p.stderr
    pm.write_text("\n".join(x for x in lines if '"trace_id":"tr000003"' not in x) + "\n")
    with pytest.raises(BadInput, match="no proc_metrics rows"):
        opendc.export(truth.run_dir, tmp_path / "d")
    p = run_script("export_opendc.py", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "od"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_perfetto_timeline_slices_and_cpu_counters(parsed, tmp_path):
    truth = parsed(nodes=2, tasks=14, no_sample_tasks=1)
    out = tmp_path / "timeline.json"
    p = run_script("export_perfetto.py", "--input", str(truth.run_dir), "--output", str(out))
    assert p.returncode == 0, p.stderr
    ev = json.loads(out.read_text())["traceEvents"]
    invs = [json.loads(x) for x in (truth.run_dir / "CTS" / "invocations.jsonl").read_text().splitlines()]
    task_slices = [e for e in ev if e["ph"] == "X" and e["cat"] != "queue"]
    assert len(task_slices) == sum(1 for i in invs if i["pid"] is not None)
    lanes: dict = {}
    for e in task_slices:
        lanes.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in lanes.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "one slot never holds two tasks at once"
    # the integral of the CPU counters equals the total CPU of the rows (exact step function)
    total = 0.0
    for pid in {e["pid"] for e in ev if e["ph"] == "C"}:
        pts = sorted((e["ts"], e["args"]["cores"]) for e in ev if e["ph"] == "C" and e["pid"] == pid)
        total += sum((b[0] - a[0]) / 1000 * a[1] for a, b in zip(pts, pts[1:]))
    assert total == pytest.approx(sum(i["cpu_ms"] for i in invs if i["pid"] is not None), rel=1e-3)
    rowcache.drop_rows_cache(truth.run_dir / "CTS")  # the same timeline from proc_metrics.jsonl as from the cache
    perfetto.export_timeline(truth.run_dir, tmp_path / "from-json.json")
    assert (tmp_path / "from-json.json").read_bytes() == out.read_bytes()


def test_cpu_step_downsampling_keeps_the_integral():
    rng = np.random.default_rng(1)
    s = np.sort(rng.uniform(0, 1e5, 3000))
    e = s + rng.uniform(1, 500, 3000)
    r = rng.uniform(0, 2, 3000)
    t, lv = perfetto.cpu_step(s, e, r, max_points=100)
    assert t.size == 100
    integral = float(np.sum(lv[:-1] * np.diff(t)) + lv[-1] * (e.max() - t[-1]))
    assert integral == pytest.approx(float(np.sum((e - s) * r)), rel=1e-6)


def test_cpu_counter_bins_equal_the_averaged_step_function():
    """Past its row budget a node's counter is binned as the rows stream by: the same averages as cpu_step over
    the whole set (rows crossing many bins, rows inside one, rows ending on the last edge)."""
    rng = np.random.default_rng(2)
    s = np.sort(rng.uniform(0, 1e5, 5000))
    e = s + rng.choice([0.5, 20.0, 3000.0], 5000)
    r = rng.uniform(0, 2, 5000)
    want_t, want = perfetto.cpu_step(s, e, r, max_points=300)
    acc = perfetto.NodeCpu(s.min(), e.max(), 300, keep_rows=0)
    for k in range(0, 5000, 700):  # in batches, as they are read
        acc.add(s[k:k + 700], e[k:k + 700], r[k:k + 700])
    t, level = acc.result()
    assert np.allclose(t, want_t) and np.allclose(level, want, rtol=1e-9, atol=1e-9)
    small = perfetto.NodeCpu(s.min(), e.max(), 300)
    small.add(s[:50], e[:50], r[:50])  # few rows: the exact step function
    assert np.array_equal(small.result()[0], perfetto.cpu_step(s[:50], e[:50], r[:50], 300)[0])


def test_order_key_is_shared_by_parse_and_export():
    invs = [{"trace_id": "b", "attempt": 1, "node_id": "n", "ts_enqueue": 5},
            {"trace_id": "a", "attempt": 2, "node_id": "n", "ts_enqueue": None, "ts_dispatch": 3},
            {"trace_id": "a", "attempt": 1, "node_id": "n", "ts_enqueue": 5}]
    assert [(i["trace_id"], i["attempt"]) for i in sorted(invs, key=vocabulary.invocation_order_key)] == \
        [("a", 2), ("a", 1), ("b", 1)]


def test_parser_output_takes_the_streaming_path(parsed, tmp_path, monkeypatch):
    """CTS as the parser writes it is exported in file order, without the join + sort fallback."""
    truth = parsed(nodes=2, tasks=15, failed=1, fenced=1)

    def no_fallback(*_a, **_k):
        raise AssertionError("the join + sort fallback was used on the parser's own output")

    monkeypatch.setattr(reader.CtsFolder, "sorted_task_rows", no_fallback)
    s = opendc.export(truth.run_dir, tmp_path / "od", include_failed=True)
    assert s.tasks == 15 and s.fragments == len(pq.read_table(tmp_path / "od" / "fragments.parquet"))


def test_row_cache_gives_the_same_trace_and_is_ignored_when_stale(parsed, tmp_path, monkeypatch):
    """The parser's binary row cache is only a faster way to the same fragments: it is used when it mirrors the CTS
    files, and ignored (proc_metrics.jsonl read instead) when they changed or a node was parsed without it."""
    from tracekit.trace import columnar

    if not columnar.available():
        pytest.skip("duckdb is not installed")
    truth = parsed(nodes=2, tasks=25, failed=2, fenced=1, cgroup=True)
    cts_dir = truth.run_dir / "CTS"
    assert (cts_dir / rowcache.ROWS_CACHE).exists()
    s = opendc.export(truth.run_dir, tmp_path / "cached", include_failed=True)
    assert any("row cache" in n for n in s.notes)
    pm = cts_dir / "proc_metrics.jsonl"
    text, mtime = pm.read_bytes(), pm.stat().st_mtime_ns
    pm.write_bytes(text)
    os.utime(pm, ns=(mtime, mtime))
    assert rowcache.read_rows_cache(cts_dir) is not None, "same file, same stamp"
    digit = text.index(b'"cpu_ms":') + len(b'"cpu_ms":')
    pm.write_bytes(text[:digit] + (b"1" if text[digit:digit + 1] != b"1" else b"2") + text[digit + 1:])
    os.utime(pm, ns=(mtime, mtime))  # an edit of the same size within the same mtime tick: the CRC sees it
    assert rowcache.read_rows_cache(cts_dir) is None
    pm.write_bytes(text)
    s = opendc.export(truth.run_dir, tmp_path / "json", include_failed=True)
    assert not any("row cache" in n for n in s.notes)
    for name in ("tasks.parquet", "fragments.parquet"):
        assert pq.read_table(tmp_path / "cached" / name).equals(pq.read_table(tmp_path / "json" / name)), name
    streamed = synthlogs.generate(tmp_path / "streamed", SynthSpec(tasks=8))
    monkeypatch.setattr(cts, "COLUMNAR", False)
    audit.parse_and_audit(streamed.run_dir, with_plots=False)
    assert not (streamed.run_dir / "CTS" / rowcache.ROWS_CACHE).exists(), "a streamed node has no binary rows"


# ---- experiment.json and small_datacenter.json against OpenDC's SDK model (FACTS.md §4, opendc-sdk-model) ----
_UNIT = {"coreSpeed": r"^\d+(\.\d+)? (GHz|MHz)$", "size": r"^\d+(\.\d+)? (GiB|MiB)$",
         "exportInterval": r"^\d+ seconds$"}
_SPEC = {  # object kind -> {key: (type, required)}; unknown keys are refused (as `opendc --strict` does)
    "experiment": {"topologies": (list, True), "workloads": (list, True), "allocationPolicies": (list, False),
                   "failureModels": (list, False), "checkpointModels": (list, False), "exportModels": (list, False),
                   "runs": (int, False), "initialSeed": (int, False), "name": (str, False)},
    "topology": {"clusters": (list, True)},
    "cluster": {"name": (str, False), "count": (int, False), "hosts": (list, True), "powerSource": (dict, False)},
    "host": {"name": (str, False), "count": (int, False), "cpu": (dict, True), "memory": (dict, True),
             "cpuPowerModel": (dict, False)},
    "cpu": {"coreCount": (int, True), "coreSpeed": (str, True), "count": (int, False), "modelName": (str, False)},
    "memory": {"size": (str, True)},
    "workload": {"type": (str, True), "source": (dict, True), "scalingPolicy": (str, False),
                 "sampleFraction": (float, False), "submissionTime": (str, False), "deferAll": (bool, False)},
    "policy": {"type": (str, True), "filters": (list, False), "weighers": (list, False), "subsetSize": (int, False)},
    "export": {"exportInterval": (str, False), "printFrequency": (int, False), "columns": (dict, False),
               "filesToExport": (list, False)},
}


def _check(kind: str, obj: dict, where: str) -> None:
    import re

    spec = _SPEC[kind]
    assert isinstance(obj, dict), where
    assert not set(obj) - set(spec), f"{where}: keys OpenDC does not know: {set(obj) - set(spec)}"
    for key, (typ, required) in spec.items():
        if required:
            assert key in obj, f"{where}: required key {key} missing"
        if key in obj:
            ok = isinstance(obj[key], typ) and not (typ is int and isinstance(obj[key], bool))
            assert ok, f"{where}.{key}: {type(obj[key]).__name__}, not {typ.__name__}"
            if key in _UNIT:
                assert re.match(_UNIT[key], obj[key]), f"{where}.{key}: unit string {obj[key]!r}"


def _check_topology(topo: dict, where: str) -> None:
    _check("topology", topo, where)
    assert topo["clusters"]
    for c in topo["clusters"]:
        _check("cluster", c, f"{where}.cluster")
        assert c["hosts"]
        for h in c["hosts"]:
            _check("host", h, f"{where}.host")
            _check("cpu", h["cpu"], f"{where}.host.cpu")
            _check("memory", h["memory"], f"{where}.host.memory")
            assert h["cpu"]["coreCount"] > 0 and h["count"] > 0


def test_experiment_and_small_datacenter_follow_the_sdk_model(parsed, tmp_path):
    truth = parsed(nodes=2, tasks=8)
    opendc.export(truth.run_dir, tmp_path / "od")
    base = tmp_path / "od"
    exp = json.loads((base / "experiment.json").read_text())
    _check("experiment", exp, "experiment")
    assert "pathToFile" not in json.dumps(exp) and "outputFolder" not in exp, "legacy-only keys"
    assert exp["topologies"] == [{"importFrom": "topology.json"}]  # resolved against the experiment's folder
    _check_topology(json.loads((base / exp["topologies"][0]["importFrom"]).read_text()), "topology.json")
    _check_topology(json.loads((base / "small_datacenter.json").read_text()), "small_datacenter.json")
    (wl,) = exp["workloads"]
    _check("workload", wl, "workload")
    assert wl["type"] == "trace" and wl["scalingPolicy"] in ("NoDelay", "Perfect")
    assert wl["source"] in ({"type": "uri", "uri": "."},) and (base / wl["source"]["uri"] / "tasks.parquet").is_file()
    (pol,) = exp["allocationPolicies"]
    _check("policy", pol, "policy")
    assert pol["type"] == "filter"
    for f in pol["filters"]:
        assert f["type"] in ("vcpu", "ram", "instanceCount", "compute", "vcpuCapacity")
        if f["type"] in ("vcpu", "ram"):
            assert isinstance(f["allocationRatio"], float) and f["allocationRatio"] > 0
    assert [f["type"] for f in pol["filters"]][:2] == ["vcpu", "ram"]
    for w in pol["weighers"]:
        assert w["type"] in ("ram", "coreRam", "instanceCount", "vcpuCapacity", "vcpu", "vgpu")
        assert isinstance(w["multiplier"], float)
    (ex,) = exp["exportModels"]
    _check("export", ex, "exportModel")
    assert ex["exportInterval"] == "1 seconds", "a short run gets a 1 s export interval, not the 5 min default"

