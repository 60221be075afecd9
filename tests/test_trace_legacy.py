"""The original Tracekit's data: synthetic raw logs and CTS folders in its exact formats (cluster.synth_original,
written from the formats as documented) import, parse, audit and export; the pure conversion on its own; the
export's task-id schemes and small_datacenter.json in the original's format; the top-N filter."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import run_script
from tracekit.cluster.synth_original import OriginalSpec, generate
from tracekit.core.errors import BadInput, BadRunFolder
from tracekit.trace import legacy
from tracekit.trace.export import opendc
from tracekit.trace.export.topn import filter_topn
from tracekit.trace.legacy_io import find_original, import_and_parse, import_original


def _invocations(cts):
    return [json.loads(line) for line in (cts / "invocations.jsonl").read_text().splitlines()]


# ---- each format: imports, parses, audits and exports ----
FORMATS = {
    "raw, workers gathered": OriginalSpec(),
    "raw, one worker's logs/RUN_ID": OriginalSpec(gathered=False),
    "raw adapter events only (no merged events.jsonl, no CTS)": OriginalSpec(merged=False, cts=False),
    "merged events.jsonl only": OriginalSpec(cts=False),
    "CTS folders only": OriginalSpec(raw=False),
    "older cctf folder": OriginalSpec(raw=False, gathered=False, cts_dir="cctf"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_original_format_imports_parses_audits_and_exports(name, tmp_path):
    spec = FORMATS[name]
    truth = generate(tmp_path / "RUN1", spec)
    if name == "merged events.jsonl only":
        for d in truth.node_dirs:
            (d / legacy.ORIGINAL_ADAPTER_EVENTS).unlink()
    res, r, checks, report = import_and_parse(tmp_path / "RUN1", with_plots=False)
    form = "cts" if not spec.raw else "raw"
    assert set(res.forms.values()) == {form}
    invs = _invocations(r.out_dir)
    assert len(invs) == len(truth.tasks)
    assert {i["trace_id"] for i in invs} == {t["trace_id"] for t in truth.tasks}  # the adapter's ids are kept
    by_tid = {t["trace_id"]: t for t in truth.tasks}
    for i in invs:
        t = by_tid[i["trace_id"]]
        assert (i["pid"], i["ts_start"], i["ts_end"], i["ts_enqueue"]) == \
            (t["pid"], t["ts_start"], t["ts_end"], t["ts_enqueue"])
        assert (i["profile"], i["cpu_units"]) == ((t["profile"], t["cpu_units"]) if form == "raw"
                                                  else (None, 1))  # the CTS keeps no output name
        if form == "raw":  # cumulative ticks: the sampled total is exact up to the last sample
            assert i["cpu_ms"] == pytest.approx(t["sampled_ms"], abs=1)
            assert i["cpu_ms"] <= t["cpu_ms"]  # a lower bound: the tail is lost
    verdicts = {c.name: c for c in checks}
    imported = verdicts["Imported data (original Tracekit)"]
    assert imported.verdict == "WARN"
    assert "exact CPU totals" in imported.summary and "tail intervals" in imported.summary
    assert "the dispatcher's task ids" in imported.summary
    assert ("head CPU" in imported.summary) == (form == "cts")
    assert verdicts["CPU accounting"].verdict == "PASS" and verdicts["Cross-reference"].verdict == "PASS"
    assert "Imported data (original Tracekit)" in report.read_text()
    # export straight from the original's folder (the already imported copy is replaced)
    p = run_script("export_opendc.py", "--input", str(tmp_path / "RUN1"), "--output", str(tmp_path / "opendc_traces"))
    assert p.returncode == 0, p.stderr
    assert "original Tracekit's data" in p.stdout
    t = pq.read_table(tmp_path / "opendc_traces" / "tasks.parquet")
    assert t.num_rows == len(truth.tasks)


def test_parse_cts_and_parse_sys_read_the_original_raw_logs(tmp_path):
    generate(tmp_path / "logs" / "R7", OriginalSpec(gathered=False, cts=False))
    env = {"PATH": "/usr/bin:/bin", "TRACEKIT_LOGS": str(tmp_path / "logs"), "RUN_ID": "R7"}
    p = run_script("parse_cts.py", "--no-plots", env=env)
    assert p.returncode == 0, p.stderr
    assert "imported the original Tracekit's data" in p.stdout and (tmp_path / "logs/R7/imported/CTS").is_dir()
    del env["RUN_ID"]  # parse_sys.py as the original: the newest run folder when no RUN_ID is given
    p = run_script("parse_sys.py", "--no-plots", env=env)
    assert p.returncode == 0, p.stderr
    assert "R7/imported/CTS" in p.stdout


def test_import_command_and_what_is_not_original(tmp_path):
    generate(tmp_path / "old", OriginalSpec(nodes=1))
    p = run_script("import_original.py", "--input", str(tmp_path / "old"), "--output", str(tmp_path / "new"),
                   "--no-plots")
    assert p.returncode == 0, p.stderr
    assert "unrecoverable: exact CPU totals" in p.stdout and "audit: WARN" in p.stdout
    note = json.loads((tmp_path / "new" / legacy.IMPORT_NOTE).read_text())
    assert note["nodes"] == {"cloud1": "raw"} and note["notes"]["exact_total"] == 8
    assert find_original(tmp_path / "new") == []  # an import (this toolkit's run folder) is not the original's
    assert find_original(tmp_path / "new" / "CTS") == []
    p = run_script("import_original.py", "--input", str(tmp_path / "new"))
    assert p.returncode == 2 and "no data of the original Tracekit" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(BadInput, match="holds something else"):
        import_original(tmp_path / "old", tmp_path / "busy")
    with pytest.raises(BadRunFolder):
        import_original(tmp_path / "nowhere")


def test_unknown_mhz_needs_cpu_freq_mhz_from_the_flag_or_the_environment(tmp_path):
    generate(tmp_path / "old", OriginalSpec(nodes=1, unknown_mhz_nodes=1, cts=False))
    p = run_script("export_opendc.py", "--input", str(tmp_path / "old"), "--output", str(tmp_path / "o1"))
    assert p.returncode == 2 and "--cpu-freq-mhz" in p.stderr
    env = {"PATH": "/usr/bin:/bin", "CPU_FREQ_MHZ": "2600"}
    p = run_script("export_opendc.py", "--input", str(tmp_path / "old"), "--output", str(tmp_path / "o2"), env=env)
    assert p.returncode == 0, p.stderr
    t = pq.read_table(tmp_path / "o2" / "tasks.parquet").to_pandas()
    assert (t["cpu_capacity"] == t["cpu_count"] * 2600.0).all()
    p = run_script("export_opendc.py", "--input", str(tmp_path / "old"), "--output", str(tmp_path / "o3"),
                   env=dict(env, CPU_FREQ_MHZ="fast"))
    assert p.returncode == 2 and "CPU_FREQ_MHZ" in p.stderr and "Traceback" not in p.stderr


# ---- the pure conversion ----
def test_convert_tells_reused_pids_apart_by_time_and_keeps_raw_cpu_exact():
    meta = {"node": "vm 1", "stage": "cloud", "cpu_cores": 2, "mem_mb": 2048, "cpu_freq_mhz": 0}
    evs = [{"trace_id": "a", "pid": 50, "ts_enqueue": 900, "ts_start": 1000, "ts_end": 3000, "status": 0,
            "output": "x_854x480_h264_veryfast_n0000.mp4"},
           {"trace_id": "a", "pid": 50, "ts_enqueue": 3500, "ts_start": 5000, "ts_end": 6000, "status": 1,
            "cpuset": "0-1"},
           {"trace_id": None, "pid": 51, "ts_start": "bad", "ts_end": 1},
           {"trace_id": "k", "pid": 52, "ts_start": 7000, "ts_end": 7100, "status": -9}]
    samples = [{"ts_ms": 1500, "pid": 50, "rss_kb": 400, "utime": 30, "stime": 10},
               {"ts_ms": 2500, "pid": 50, "rss_kb": 800, "utime": 100, "stime": 20},
               {"ts_ms": 5500, "pid": 50, "rss_kb": 100, "utime": 2, "stime": 1},
               {"ts_ms": 9000, "pid": 50, "rss_kb": 1, "utime": 1, "stime": 1}]
    out = legacy.convert_node(meta, evs, samples, form="raw", fallback_node="f")
    assert out.node_id == "vm_1" and out.node_json["cpu_freq_mhz"] is None and out.node_json["clk_tck"] == 1000
    e1, e2, e3 = out.events
    assert (e3["status"], e3["exit_code"], e3["signal"], e3["error"]) == ("failed", None, 9, "signal 9")
    assert (e1["trace_id"], e1["profile"], e1["cpu_units"], e1["cpu_ms"], e1["max_rss_kb"]) == \
        ("a", "light1c", 1, 1200, 800)  # 120 ticks at CLK_TCK 100, from process start
    assert (e2["trace_id"], e2["cpu_units"], e2["status"], e2["cpu_ms"], e2["binding"]) == \
        ("pid50-2", 2, "failed", 30, "exclusive")  # a repeated id is replaced; units from the cpuset
    assert e1["starttime"] != e2["starttime"]
    procs = [p for t in out.ticks for p in t["procs"]]
    assert [(p[1], p[2], p[3]) for p in procs] == [(1, "a", 400), (1, "a", 1200), (2, "pid50-2", 30), (0, None, 20)]
    n = out.notes
    assert (n["bad_records"], n["samples_unmatched"], n["trace_id_made"], n["mhz_unknown"], n["clk_tck_assumed"]) \
        == (1, 1, 1, 1, 1)
    assert legacy.summarize(n)["unrecoverable"]["exact CPU totals (cpu_ms = the last sampled value, a lower bound)"] \
        == 3


def test_convert_cts_rebases_differences_per_execution():
    rows = [{"ts_ms": 1100, "pid": 7, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 10},
            {"ts_ms": 1300, "pid": 7, "dt_ms": 200, "cpu_ms": 150, "rss_kb": 10},
            {"ts_ms": 1500, "pid": 7, "dt_ms": 200, "cpu_ms": 190, "rss_kb": 12}]
    inv = [{"trace_id": "u1", "pid": 7, "ts_enqueue": 1000, "ts_start": 1050, "ts_end": 1600}]
    out = legacy.convert_node({"node_id": "n1", "cpu_freq_mhz": 2400}, inv, rows, form="cts", fallback_node="x")
    assert [p[3] for t in out.ticks for p in t["procs"]] == [0, 150, 340]
    assert out.events[0]["cpu_ms"] == 340 and out.events[0]["status"] == "ok"
    assert out.notes["head_lost"] == 1 and out.notes["status_assumed"] == 1 and out.notes["start_before_enqueue"] == 0
    late = legacy.convert_node({}, [dict(inv[0], ts_enqueue=1400)], rows, form="cts", fallback_node="x")
    assert late.notes["start_before_enqueue"] == 1
    with pytest.raises(ValueError):
        legacy.convert_node({}, inv, rows, form="other", fallback_node="x")


def test_helpers():
    assert legacy.profile_of("a_1920x1080_hevc_medium_n0012.mp4") == ("hevc1080p", 4)
    assert legacy.profile_of("a_720p_crf28.mp4") is None
    assert legacy.cpuset_size("0-1,4") == 3 and legacy.cpuset_size("x") == 0 and legacy.cpuset_size(None) == 0
    assert legacy.node_of({}, "fallback") == "fallback"


# ---- export: the original's task-id schemes, small_datacenter.json, top-N ----
def test_task_id_modes_reproduce_the_original_schemes(tmp_path):
    same = tmp_path / "same"
    generate(same, OriginalSpec(same_pids=True, cts=False))  # PIDs repeat across the two workers
    apart = tmp_path / "apart"
    generate(apart, OriginalSpec(same_pids=False, cts=False))
    ids = {}
    for mode in opendc.TASK_ID_MODES:
        opendc.export(apart, tmp_path / f"a-{mode}", task_id_mode=mode)
        ids[mode] = pq.read_table(tmp_path / f"a-{mode}" / "tasks.parquet")["id"].to_pylist()
        frag_ids = set(pq.read_table(tmp_path / f"a-{mode}" / "fragments.parquet")["id"].to_pylist())
        assert frag_ids == set(ids[mode])
    pids = [i["pid"] for i in _invocations(apart / "imported" / "CTS")]
    assert ids["dense"] == list(range(16)) and ids["sequential"] == list(range(1, 17))
    assert ids["pid"] == pids and ids["auto"] == pids  # unique PIDs: auto takes them
    s = opendc.export(same, tmp_path / "s-auto", task_id_mode="auto")
    assert pq.read_table(tmp_path / "s-auto" / "tasks.parquet")["id"].to_pylist() == list(range(1, 17))
    assert any("auto: 8 PID(s) repeat" in n for n in s.notes)
    with pytest.raises(BadInput, match="ids would collide"):
        opendc.export(same, tmp_path / "s-pid", task_id_mode="pid")
    p = run_script("export_opendc.py", "--input", str(same), "--output", str(tmp_path / "x"), "--task-id-mode", "pid")
    assert p.returncode == 2 and "--task-id-mode auto or sequential" in p.stderr


def test_small_datacenter_in_the_original_format(tmp_path):
    generate(tmp_path / "old", OriginalSpec(nodes=3, cts=False))
    opendc.export(tmp_path / "old", tmp_path / "od", small_datacenter="original")
    sd = json.loads((tmp_path / "od" / "small_datacenter.json").read_text())
    assert sd == {"clusters": [{"name": "C01", "hosts": [
        {"name": "H01", "count": 3, "cpu": {"coreCount": 4, "coreSpeed": 2400},
         "memory": {"memorySize": 16 << 30}}]}]}
    assert json.loads((tmp_path / "od" / "topology.json").read_text())["clusters"][0]["name"] == "tracekit"
    assert opendc.original_small_datacenter(
        [{"node_id": "a", "cpu_cores": 8, "mem_mb": 1024}, {"node_id": "b", "cpu_cores": 4, "mem_mb": 1024}],
        {"a": 2049.0, "b": 2000.0})["clusters"][0]["hosts"][0]["cpu"] == {"coreCount": 4, "coreSpeed": 2000}


def test_filter_topn_keeps_the_earliest_tasks_and_their_fragments(tmp_path):
    generate(tmp_path / "old", OriginalSpec(cts=False))
    opendc.export(tmp_path / "old", tmp_path / "od", task_id_mode="sequential")
    kept, total, fkept, ftotal = filter_topn(tmp_path / "od", tmp_path / "top", 5)
    t = pq.read_table(tmp_path / "top" / "tasks.parquet")
    full = pq.read_table(tmp_path / "od" / "tasks.parquet").to_pandas()
    assert (kept, total) == (5, 16) and t.schema == pq.read_table(tmp_path / "od" / "tasks.parquet").schema
    assert sorted(t["submission_time"].to_pylist()) == sorted(full["submission_time"])[:5]
    f = pq.read_table(tmp_path / "top" / "fragments.parquet")
    assert set(f["id"].to_pylist()) == set(t["id"].to_pylist()) and f.num_rows == fkept < ftotal
    keep = set(t["id"].to_pylist())
    assert Counter(f["id"].to_pylist()) == Counter(
        i for i in pq.read_table(tmp_path / "od" / "fragments.parquet")["id"].to_pylist() if i in keep)
    assert (tmp_path / "top" / "experiment.json").is_file() and (tmp_path / "top" / "small_datacenter.json").is_file()


def test_events_without_samples_still_import_and_metadata_alone_is_refused(tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, cts=False))
    (tmp_path / "r" / legacy.ORIGINAL_RAW_SAMPLES).unlink()  # the collector never ran
    res = import_original(tmp_path / "r")
    assert res.executions == 8 and res.samples == 0 and res.notes["no_samples"] == 8
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / legacy.ORIGINAL_NODE_META).write_text("{}")
    with pytest.raises(BadInput, match="nothing to import"):
        import_original(tmp_path / "m")


def test_an_unwritable_destination_says_where_to_import(tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, cts=False))
    (tmp_path / "file").write_text("")  # (root writes into read-only folders: a file in the path fails for anyone)
    with pytest.raises(BadInput, match="cannot write the import into .*--output DIR"):
        import_original(tmp_path / "r", tmp_path / "file" / "imported")
