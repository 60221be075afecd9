"""docs/migrating.md "Data, files and export": every row of its table runs here in its old form (one test per row,
keyed by the row's first cell; a row without a test, or a test without a row, fails)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TOOLS, run_script, wait_for
from tracekit.cluster.synth_original import OriginalSpec, generate
from tracekit.core import paths, schema
from tracekit.trace import legacy
from tracekit.trace.export import opendc

DOC = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"
SECTION = "## Data, files and export"


def table_rows() -> list[str]:
    """First cells of the section's table."""
    text = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [m[1].strip() for m in re.finditer(r"^\| (.+?) \| .+ \|$", text, re.M)
            if not m[1].startswith("original") and not set(m[1]) <= set("-| ")]


ROWS: dict = {}


def row(first_cell: str):
    def add(fn):
        ROWS[first_cell] = fn
        return fn
    return add


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """Two workers' data in the original's formats (raw + CTS), imported and parsed."""
    root = tmp_path_factory.mktemp("orig") / "20250901T120000Z"
    truth = generate(root, OriginalSpec(reuse_pid=True))
    p = run_script("import_original.py", "--input", str(root), "--no-plots")
    assert p.returncode == 0, p.stderr
    return root, truth


def _env(**extra) -> dict:
    return {"PATH": "/usr/bin:/bin", **extra}


def _invs(cts: Path) -> list[dict]:
    return [json.loads(x) for x in (cts / "invocations.jsonl").read_text().splitlines()]


@row("`logs/$RUN_ID/node_meta.json` (per worker, `node`, `host`, `iface`)")
def _node_meta(old, tmp_path):
    root, _ = old
    meta = json.loads((root / "imported" / "cloud1" / "node.json").read_text())
    assert meta["node_id"] == "cloud1" and meta["hostname"] == "cloud1" and meta["cpu_freq_mhz"] == 2399


@row("raw `logs/$RUN_ID/proc_metrics.jsonl` (`ts_ms, pid, rss_kb, utime, stime`)")
def _raw_samples(old, tmp_path):
    root, truth = old
    ticks = [json.loads(x) for x in (root / "imported" / "cloud1" / "samples.jsonl").read_text().splitlines()]
    assert sum(len(t["procs"]) for t in ticks) == sum(t["samples"] for t in truth.tasks if t["node"] == "cloud1")
    assert all(list(t) == list(schema.SAMPLE_TICK_FIELDS) for t in ticks)


@row("`logs/$RUN_ID/events.ffmpeg.jsonl`")
def _adapter_events(old, tmp_path):
    root, truth = old
    evs = [json.loads(x) for x in (root / "imported" / "cloud2" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in evs] == ["exec"] * 8 and all(e["cpuset"] in ("0-1", None) for e in evs)


@row("merged `logs/$RUN_ID/events.jsonl` (made by `make parse`)")
def _merged_events(old, tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, cts=False))
    (tmp_path / "r" / legacy.ORIGINAL_ADAPTER_EVENTS).unlink()
    p = run_script("import_original.py", "--input", str(tmp_path / "r"), "--no-plots")
    assert p.returncode == 0 and "8 execution(s)" in p.stdout, p.stderr


@row("`CTS/invocations.jsonl` `trace_id, pid, ts_enqueue, ts_start, ts_end`")
def _cts_invocations(old, tmp_path):
    root, _ = old
    line = (root / "imported" / "CTS" / "invocations.jsonl").read_text().splitlines()[0]
    assert list(json.loads(line))[:5] == list(legacy.ORIGINAL_INVOCATION_FIELDS)


@row("`CTS/proc_metrics.jsonl` `ts_ms, pid, dt_ms, cpu_ms, rss_kb`")
def _cts_proc_metrics(old, tmp_path):
    root, _ = old
    line = (root / "imported" / "CTS" / "proc_metrics.jsonl").read_text().splitlines()[0]
    assert list(json.loads(line))[:5] == list(legacy.ORIGINAL_PROC_METRIC_FIELDS)


@row("`CTS/nodes.json` `node_id, stage, cpu_cores, mem_mb, cpu_model, cpu_freq_mhz`")
def _cts_nodes(old, tmp_path):
    root, _ = old
    nodes = json.loads((root / "imported" / "CTS" / "nodes.json").read_text())
    assert list(nodes[0])[:6] == list(legacy.ORIGINAL_NODE_FIELDS) and nodes[0]["mem_mb"] == 15997


@row("`CTS/audit_report.md`")
def _audit(old, tmp_path):
    root, _ = old
    text = (root / "imported" / "CTS" / "audit_report.md").read_text()
    assert "Overall:" in text and "Imported data (original Tracekit): WARN" in text


@row("`cctf/` (the CTS folder's older name)")
def _cctf(old, tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, raw=False, cts_dir="cctf"))
    p = run_script("export_opendc.py", "--input", str(tmp_path / "r" / "cctf"), "--output", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    assert pq.read_table(tmp_path / "o" / "tasks.parquet").num_rows == 8


@row("`trace_id`: a uuid4 per execution (the adapter's)")
def _trace_id(old, tmp_path):
    root, truth = old
    assert {i["trace_id"] for i in _invs(root / "imported" / "CTS")} == {t["trace_id"] for t in truth.tasks}


@row("samples matched to invocations by PID")
def _pid_reuse(old, tmp_path):
    root, truth = old  # the second task of each worker reused the first one's PID
    invs = [i for i in _invs(root / "imported" / "CTS") if i["node_id"] == "cloud1"]
    first, second = sorted(invs, key=lambda i: i["ts_start"])[:2]
    assert first["pid"] == second["pid"] and first["starttime"] != second["starttime"]
    want = {t["trace_id"]: t["sampled_ms"] for t in truth.tasks}
    assert first["cpu_ms"] == pytest.approx(want[first["trace_id"]], abs=1)
    assert second["cpu_ms"] == pytest.approx(want[second["trace_id"]], abs=1)


@row("`export_opendc.py --input` an original CTS folder (now: \"no task to export\")")
def _export_original_cts(old, tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, raw=False))
    p = run_script("export_opendc.py", "--input", str(tmp_path / "r" / "CTS"), "--output", str(tmp_path / "o"))
    assert p.returncode == 0 and "no task to export" not in p.stderr, p.stderr
    assert "tasks 8" in p.stdout


@row("`parse_cts.py` on the original's raw logs (now: \"no node folders\")")
def _parse_original(old, tmp_path):
    generate(tmp_path / "logs" / "R1", OriginalSpec(nodes=1, gathered=False, cts=False))
    p = run_script("parse_cts.py", "--run-id", "R1", "--no-plots", env=_env(TRACEKIT_LOGS=str(tmp_path / "logs")))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "logs" / "R1" / "imported" / "CTS" / "audit_report.md").is_file()


@row("`tools/parse_sys.py` (`make parse`, `RUN_ID` from the environment, else the newest run)")
def _parse_sys(old, tmp_path):
    generate(tmp_path / "logs" / "20250101T000000Z", OriginalSpec(nodes=1, gathered=False, cts=False))
    generate(tmp_path / "logs" / "20250202T000000Z", OriginalSpec(nodes=1, gathered=False, cts=False))
    p = run_script("parse_sys.py", "--no-plots", env=_env(TRACEKIT_LOGS=str(tmp_path / "logs")))
    assert p.returncode == 0, p.stderr
    assert "20250202T000000Z/imported/CTS" in p.stdout


@row("`tools/filter_opendc_topn.py --input --output --topn`")
def _topn(old, tmp_path):
    root, _ = old
    opendc.export(root, tmp_path / "od")
    p = run_script("filter_opendc_topn.py", "--input", str(tmp_path / "od"), "--output", str(tmp_path / "top"),
                   "--topn", "3")
    assert p.returncode == 0 and "Filtered tasks: 3 kept out of 16" in p.stdout, p.stderr


def _ids(root: Path, out: Path, mode: str) -> tuple[list[int], subprocess.CompletedProcess]:
    p = run_script("export_opendc.py", "--input", str(root), "--output", str(out), "--task-id-mode", mode)
    ids = pq.read_table(out / "tasks.parquet")["id"].to_pylist() if p.returncode == 0 else []
    return ids, p


@row("`export_opendc.py --task-id-mode auto`")
def _mode_auto(old, tmp_path):
    ids, p = _ids(old[0], tmp_path / "a", "auto")  # PIDs repeat (two workers, a reused PID): 1..n
    assert ids == list(range(1, 17)) and "sequential" in p.stdout
    generate(tmp_path / "u", OriginalSpec(same_pids=False, cts=False))
    ids, p = _ids(tmp_path / "u", tmp_path / "b", "auto")
    assert ids == [i["pid"] for i in _invs(tmp_path / "u" / "imported" / "CTS")]


@row("`export_opendc.py --task-id-mode pid`")
def _mode_pid(old, tmp_path):
    _, p = _ids(old[0], tmp_path / "a", "pid")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "collide" in p.stderr
    generate(tmp_path / "u", OriginalSpec(same_pids=False, cts=False))
    ids, p = _ids(tmp_path / "u", tmp_path / "b", "pid")
    assert p.returncode == 0 and ids == [i["pid"] for i in _invs(tmp_path / "u" / "imported" / "CTS")]


@row("`export_opendc.py --task-id-mode sequential`")
def _mode_seq(old, tmp_path):
    ids, p = _ids(old[0], tmp_path / "a", "sequential")
    assert p.returncode == 0 and ids == list(range(1, 17))
    assert set(pq.read_table(tmp_path / "a" / "fragments.parquet")["id"].to_pylist()) == set(ids)


@row("`--output opendc_traces/`")
def _opendc_traces(old, tmp_path):
    p = subprocess.run([sys.executable, str(TOOLS / "export_opendc.py"), "--input", str(old[0]), "--output",
                        "opendc_traces/"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "opendc_traces" / "tasks.parquet").is_file()


@row("`small_datacenter.json` (`C01`, hosts `H01..` by spec, MHz, bytes)")
def _small_dc(old, tmp_path):
    p = run_script("export_opendc.py", "--input", str(old[0]), "--output", str(tmp_path / "o"),
                   "--small-datacenter", "original")
    assert p.returncode == 0, p.stderr
    sd = json.loads((tmp_path / "o" / "small_datacenter.json").read_text())
    assert sd["clusters"][0]["name"] == "C01"
    assert sd["clusters"][0]["hosts"] == [{"name": "H01", "count": 2, "cpu": {"coreCount": 4, "coreSpeed": 2400},
                                           "memory": {"memorySize": 16 << 30}}]


@row("`tasks.parquet` / `fragments.parquet` columns and types")
def _columns(old, tmp_path):
    opendc.export(old[0], tmp_path / "o")
    t = pq.read_schema(tmp_path / "o" / "tasks.parquet")
    f = pq.read_schema(tmp_path / "o" / "fragments.parquet")
    assert [(x.name, str(x.type)) for x in t][:6] == [("id", "int32"), ("submission_time", "int64"),
                                                      ("duration", "int64"), ("cpu_count", "int32"),
                                                      ("cpu_capacity", "double"), ("mem_capacity", "int64")]
    assert [(x.name, str(x.type)) for x in f] == [("id", "int32"), ("duration", "int64"), ("cpu_usage", "double")]


@row("`tasks.parquet` `cpu_count` / `cpu_capacity` from peak and P95 usage")
def _cpu_count(old, tmp_path):
    root, truth = old
    opendc.export(root, tmp_path / "o")
    t = pq.read_table(tmp_path / "o" / "tasks.parquet").to_pandas()
    units = {x["trace_id"]: x["cpu_units"] for x in truth.tasks}
    assert [int(c) for c in t["cpu_count"]] == [units[n] for n in t["name"]]
    assert (t["cpu_capacity"] == t["cpu_count"] * 2399.0).all()


@row("the export's 2400 MHz when a node has none")
def _no_constant(old, tmp_path):
    generate(tmp_path / "r", OriginalSpec(nodes=1, gathered=False, cts=False, unknown_mhz_nodes=1))
    p = run_script("export_opendc.py", "--input", str(tmp_path / "r"), "--output", str(tmp_path / "o"))
    assert p.returncode == 2 and "--cpu-freq-mhz" in p.stderr and "Traceback" not in p.stderr


def _run_collector(run_env: dict, tmp_path: Path, command: str, **extra) -> dict:
    env = dict(run_env, NODE_ID="n1", TIME_SYNC="0", PROC_INTERVAL_MS="100", **extra)
    p = subprocess.Popen([sys.executable, str(TOOLS / "collect_sys.py"), command], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta_path = paths.node_meta_path(env["RUN_ID"], "n1")
    try:
        wait_for(lambda: meta_path.is_file() and json.loads(meta_path.read_text())["clock"]["rtt_ms"] is not None)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    return json.loads(meta_path.read_text())


@row("`collect_sys.py run-procmon`")
def _run_procmon(run_env, tmp_path):
    meta = _run_collector(run_env, tmp_path, "run-procmon")
    assert meta["collector"]["stopped_ms"] is not None and meta["collector"]["interval_ms"] == 100


@row("`CPU_FREQ_MHZ`")
def _cpu_freq(run_env, tmp_path):
    meta = _run_collector(run_env, tmp_path, "run", CPU_FREQ_MHZ="2345")
    assert meta["cpu_freq_mhz"] == 2345.0 and meta["collector"]["cpu_freq_mhz_from"] == "CPU_FREQ_MHZ"
    env = dict(run_env, NODE_ID="n2", USE_PY_COLLECT="0", CPU_FREQ_MHZ="2345")  # the shell fallback too
    assert run_script("collect_sys.py", "start", env=env).returncode == 0
    meta_path = paths.node_meta_path(env["RUN_ID"], "n2")
    try:
        wait_for(meta_path.is_file)
        wait_for(lambda: json.loads(meta_path.read_text())["cpu_freq_mhz"] == 2345)
    finally:
        assert run_script("collect_sys.py", "stop", env=env).returncode == 0
    p = run_script("collect_sys.py", "run", env=dict(env, CPU_FREQ_MHZ="fast"))
    assert p.returncode == 2 and "CPU_FREQ_MHZ" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@row("`IFACE`, `VM_IP`")
def _iface(run_env, tmp_path):
    meta = _run_collector(run_env, tmp_path, "run", IFACE="eth9", VM_IP="10.0.0.5")
    assert meta["collector"]["iface"] == "eth9" and meta["collector"]["vm_ip"] == "10.0.0.5"


@row("`CONTAINER`")
def _container(run_env, tmp_path):
    p = run_script("collect_sys.py", "start", env=dict(run_env, NODE_ID="n1", CONTAINER="svc"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "CONTAINER" in p.stderr and "PROC_MATCH" in p.stderr


def test_every_row_has_a_test_and_every_test_a_row():
    rows = table_rows()
    assert len(rows) >= 20
    assert set(rows) == set(ROWS), (sorted(set(rows) - set(ROWS)), sorted(set(ROWS) - set(rows)))


def _needs(fn) -> str:
    return fn.__code__.co_varnames[0]  # "old" (files only) or "run_env" (a collector with the real Redis)


@pytest.mark.parametrize("first_cell", [k for k, f in ROWS.items() if _needs(f) == "old"])
def test_old_form(first_cell, old, tmp_path):
    ROWS[first_cell](old, tmp_path)


@pytest.mark.parametrize("first_cell", [k for k, f in ROWS.items() if _needs(f) == "run_env"])
def test_old_form_on_the_node(first_cell, run_env, tmp_path):
    ROWS[first_cell](run_env, tmp_path)
