"""Sim-vs-real comparison: the metric functions on hand-made arrays with known answers, OpenDC output files in
OpenDC's exact task/host table schema, matching, the report and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_script
from tracekit.cluster import synthlogs
from tracekit.cluster.synthlogs import SynthSpec
from tracekit.core.errors import BadInput
from tracekit.trace import audit, reader
from tracekit.trace import compare as cm
from tracekit.trace import opendc_results as odr
from tracekit.trace import sim_vs_real as svr
from tracekit.trace.export import opendc

# OpenDC's task table as DfltTaskExportColumns.kt writes it (column names and physical types; the optional ones
# nullable). Written here, not imported from the product, so the reader is tested against OpenDC, not itself.
OPENDC_TASK_SCHEMA = pa.schema([
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("timestamp_absolute", pa.int64(), nullable=False),
    pa.field("task_id", pa.int32(), nullable=False),
    pa.field("task_name", pa.string(), nullable=False),
    pa.field("host_name", pa.string(), nullable=False),
    pa.field("mem_capacity", pa.int64(), nullable=False),
    pa.field("cpu_count", pa.int32(), nullable=False),
    pa.field("cpu_limit", pa.float32(), nullable=False),
    pa.field("cpu_usage", pa.float32(), nullable=False),
    pa.field("cpu_demand", pa.float32(), nullable=False),
    pa.field("cpu_time_active", pa.int64(), nullable=False),
    pa.field("cpu_time_idle", pa.int64(), nullable=False),
    pa.field("cpu_time_steal", pa.int64(), nullable=False),
    pa.field("cpu_time_lost", pa.int64(), nullable=False),
    pa.field("uptime", pa.int64(), nullable=False),
    pa.field("downtime", pa.int64(), nullable=False),
    pa.field("num_failures", pa.int64(), nullable=False),
    pa.field("num_pauses", pa.int64(), nullable=False),
    pa.field("schedule_time", pa.int64()),
    pa.field("submission_time", pa.int64()),
    pa.field("finish_time", pa.int64()),
    pa.field("task_state", pa.string()),
    pa.field("scheduling_delay", pa.int64()),
    pa.field("failure_delay", pa.int64()),
    pa.field("checkpoint_delay", pa.int64()),
])
OPENDC_HOST_SCHEMA = pa.schema([
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("timestamp_absolute", pa.int64(), nullable=False),
    pa.field("host_name", pa.string(), nullable=False),
    pa.field("cluster_name", pa.string(), nullable=False),
    pa.field("core_count", pa.int32(), nullable=False),
    pa.field("mem_capacity", pa.int64(), nullable=False),
    pa.field("cpu_capacity", pa.float32(), nullable=False),
    pa.field("cpu_usage", pa.float32(), nullable=False),
    pa.field("cpu_utilization", pa.float32(), nullable=False),
])


def opendc_task_table(tasks: list[dict], interval_ms: int = 1000, start_abs: int = 1_760_000_000_000,
                      named: bool = True) -> pa.Table:
    """Rows as OpenDC writes them: one per task per export tick from its submission until the tick after it
    finished; no host and no times until scheduled. ``tasks``: id, name, host, sub, sched, fin (sim ms; fin None
    = never finished), mhz (usage while running), cpu_count."""
    cols = {f.name: [] for f in OPENDC_TASK_SCHEMA}
    for t in tasks:
        end = t["fin"] if t["fin"] is not None else max(x["sub"] for x in tasks) + 5 * interval_ms
        first = (t["sub"] // interval_ms + 1) * interval_ms
        ts = first
        while True:
            placed = t["sched"] is not None and ts >= t["sched"]
            done = t["fin"] is not None and ts >= t["fin"]
            running = placed and not done
            row = dict(timestamp=ts, timestamp_absolute=ts + start_abs, task_id=t["id"],
                       task_name=t["name"] if named else "", host_name=t["host"] if placed and not done else "",
                       mem_capacity=1000, cpu_count=t.get("cpu_count", 1), cpu_limit=2400.0 * t.get("cpu_count", 1),
                       cpu_usage=t["mhz"] if running else 0.0, cpu_demand=t["mhz"] if running else 0.0,
                       cpu_time_active=0, cpu_time_idle=0, cpu_time_steal=0, cpu_time_lost=0, uptime=0, downtime=0,
                       num_failures=0, num_pauses=0, schedule_time=t["sched"] if placed else None,
                       submission_time=t["sub"], finish_time=t["fin"] if done else None,
                       task_state="COMPLETED" if done else ("RUNNING" if placed else "PROVISIONING"),
                       scheduling_delay=0, failure_delay=0, checkpoint_delay=0)
            for k, v in row.items():
                cols[k].append(v)
            if done or ts >= end:
                break
            ts += interval_ms
    return pa.table(cols, schema=OPENDC_TASK_SCHEMA)


def write_opendc_output(root: Path, tasks: list[dict], interval_ms: int = 1000, named: bool = True,
                        host_rows: list[dict] | None = None) -> Path:
    """An OpenDC output folder laid out as the CLI writes it: output/<name>/raw-output/0/seed=0/task.parquet."""
    d = root / "output" / "tracekit" / "raw-output" / "0" / "seed=0"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(opendc_task_table(tasks, interval_ms, named=named), d / "task.parquet")
    if host_rows is not None:
        cols = {f.name: [r[f.name] for r in host_rows] for f in OPENDC_HOST_SCHEMA}
        pq.write_table(pa.table(cols, schema=OPENDC_HOST_SCHEMA), d / "host.parquet")
    return root / "output"


# ---- metrics on hand-made arrays ----


def test_ks_statistic_and_p_value():
    d, p = cm.ks_2samp(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert d == 0 and p == 1.0
    d, p = cm.ks_2samp(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert d == 1.0 and p < 0.1
    # ECDFs: a = {0, 0, 1, 2}, b = {0, 1, 1, 1}: at 0, 0.5 vs 0.25; at 1, 0.75 vs 1.0 -> D = 0.25 (ties exact)
    d, _ = cm.ks_2samp(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]))
    assert d == pytest.approx(0.25)
    # the Kolmogorov tail: Q(1.36) ~= 0.049 (the textbook 5 % critical value), Q(1.63) ~= 0.010
    big = 1e12  # ne -> infinity: lambda = sqrt(ne) * D
    assert cm.kolmogorov_sf(1.36 / math.sqrt(big), big) == pytest.approx(0.0494, abs=5e-4)
    assert cm.kolmogorov_sf(1.63 / math.sqrt(big), big) == pytest.approx(0.0098, abs=5e-4)
    assert math.isnan(cm.ks_2samp(np.array([]), np.array([1.0]))[0])


def test_ks_rejects_shifted_samples_and_accepts_same_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)
    assert cm.ks_2samp(a, b)[1] > 0.05
    assert cm.ks_2samp(a, b + 0.3)[1] < 1e-6


def test_relative_errors_and_percentiles():
    assert cm.rel_error(110, 100) == pytest.approx(0.10)
    assert cm.rel_error(300, 200, floor=1000) == pytest.approx(0.10)  # a small real value uses the floor
    assert cm.rel_error(0, 0) == 0.0 and math.isnan(cm.rel_error(1, 0))
    real = np.arange(101, dtype=float)  # p50 = 50, p95 = 95, p99 = 99
    sim = real * 1.1
    e = cm.percentile_errors(real, sim, (50, 95, 99))
    assert e[50] == pytest.approx((50.0, 55.0, 0.10)) and e[99][2] == pytest.approx(0.10)


def test_makespan_limit_long_and_short_runs():
    th = cm.Thresholds()
    assert cm.makespan_limit_ms(600_000, th) == pytest.approx(6000)  # 1 % of 10 min
    assert cm.makespan_limit_ms(3_600_000, th) == pytest.approx(36_000)
    assert cm.makespan_limit_ms(23_000, th) == 6000  # shorter: 6 s


def test_throughput_rmse_finds_the_lag():
    edges = np.arange(1, 21) * 1000.0  # 20 bins of 1 s
    real = np.arange(10) * 1000.0 + 500  # one completion per second from 0.5 s
    assert cm.throughput_rmse(real, real, edges, 10) == (0.0, 0.0, 0)
    late = real + 3000  # the simulation finishes everything 3 bins late
    at0, best, lag = cm.throughput_rmse(real, late, edges, 10)
    assert lag == 3 and best == 0.0 and at0 > 0.1
    # known value at lag 0: the cumulative fractions differ by 0.3 in bins 1..10 (cut at 0.0 ..), see below
    r = cm.cumulative_counts(real, edges) / 10
    s = cm.cumulative_counts(late, edges) / 10
    assert at0 == pytest.approx(float(np.sqrt(np.mean((r - s) ** 2))))
    assert cm.throughput_rmse(real, late, edges, 2)[2] == 2  # the search stops at max_lag


def test_binned_amount_spreads_exactly():
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    # 30 units over [5, 25): 1.5 per ms -> 7.5, 15, 7.5
    assert cm.binned_amount(np.array([5.0]), np.array([25.0]), np.array([30.0]), edges) == pytest.approx(
        [7.5, 15.0, 7.5])
    # two overlapping intervals add; a zero-length one lands in its bin; outside the edges is dropped
    got = cm.binned_amount(np.array([0.0, 10.0, 12.0, 40.0]), np.array([20.0, 30.0, 12.0, 50.0]),
                           np.array([20.0, 10.0, 3.0, 99.0]), edges)
    assert got == pytest.approx([10.0, 10.0 + 5.0 + 3.0, 5.0])
    assert cm.binned_amount(np.array([]), np.array([]), np.array([]), edges) == pytest.approx([0, 0, 0])


def test_cpu_alignment_metrics():
    r = np.array([1.0, 2.0, 3.0, 0.0])
    s = np.array([1.0, 2.0, 3.0, 0.0])
    assert cm.smape(r, s) == 0.0 and cm.pearson(r, s) == pytest.approx(1.0) and cm.rmse(r, s) == 0.0
    s2 = np.array([2.0, 2.0, 3.0, 0.0])  # bin 0: 2|2-1|/(1+2) = 2/3; bins 1, 2: 0; bin 3 idle on both: skipped
    assert cm.smape(r, s2) == pytest.approx((2 / 3) / 3)
    assert cm.rmse(r, s2) == pytest.approx(0.5)
    assert cm.pearson(r, -r) == pytest.approx(-1.0)
    assert math.isnan(cm.pearson(r, np.ones(4))) and math.isnan(cm.smape(np.zeros(3), np.zeros(3)))


def test_abs_summary():
    s = cm.abs_summary(np.array([-3.0, 1.0, 2.0]))
    assert s["max_abs"] == 3.0 and s["p50_abs"] == 2.0 and s["mean"] == 0.0


def test_checks_turn_metrics_into_verdicts():
    th = cm.Thresholds()
    m = {"coverage": {"real": 3, "sim": 3, "matched": 3, "real_unmatched": 0, "sim_unmatched": 0,
                      "sim_unfinished": 0},
         "makespan": {"real_ms": 20_000.0, "sim_ms": 27_000.0},  # 7 s off a short run: FAIL
         "start": cm.abs_summary(np.array([0.0, 100.0])), "wait_error": cm.abs_summary(np.array([0.0])),
         "wait": {50: (2000.0, 2050.0, 0.025), 95: (4000.0, 4500.0, 0.125), 99: (5000.0, 5100.0, 0.02)},
         "ks": (0.2, 0.5), "throughput": {"rmse_lag0": 0.05, "best_rmse": 0.01, "best_lag": 1, "bin_ms": 500.0},
         "cpu": {"n1": {"smape": 0.01, "pearson": 0.99, "rmse": 0.05, "median": 1.0, "host": ""},
                 "n2": {"missing": "no simulated host ran the tasks of n2", "host": ""}}}
    got = {c.name: c.verdict for c in cm.checks(m, th)}
    assert got["makespan"] == cm.FAIL and got["wait p50"] == cm.PASS and got["wait p95"] == cm.FAIL
    assert got["wait p99"] == cm.PASS and got["wait distribution (KS)"] == cm.PASS
    assert got["cumulative throughput"] == cm.PASS and got["task start error"] == cm.INFO
    assert got["CPU n1 sMAPE"] == got["CPU n1 Pearson r"] == got["CPU n1 RMSE"] == cm.PASS
    assert got["CPU n2"] == cm.INFO
    assert cm.overall(cm.checks(m, th)) == cm.FAIL
    m["makespan"]["sim_ms"] = 25_000.0
    m["wait"][95] = (4000.0, 4200.0, 0.05)
    assert cm.overall(cm.checks(m, th)) == cm.PASS
    th.start_p95_ms = 50
    assert {c.name: c.verdict for c in cm.checks(m, th)}["task start error"] == cm.FAIL


# ---- OpenDC output files ----


def _three_tasks() -> list[dict]:
    return [dict(id=0, name="t1", host="H", sub=0, sched=0, fin=2500, mhz=2400.0),
            dict(id=1, name="t2", host="H-0", sub=200, sched=1000, fin=3000, mhz=4800.0, cpu_count=2),
            dict(id=2, name="t3", host="H", sub=300, sched=3000, fin=4200, mhz=2400.0)]


def test_reader_takes_each_tasks_last_row_from_opendc_schema(tmp_path):
    out = write_opendc_output(tmp_path, _three_tasks())
    task, host = odr.find_output(tmp_path)  # nested output/<name>/raw-output/<run>/seed=<n>/
    assert task.name == "task.parquet" and host is None
    assert pq.read_schema(task).field("task_id").type == pa.int32()  # the file really is in OpenDC's types
    s = odr.read_tasks(task)
    assert s.rows > 3 and list(s.key) == [0, 1, 2] and s.key_is_int
    assert list(s.name) == ["t1", "t2", "t3"]
    assert list(s.schedule) == [0, 1000, 3000] and list(s.finish) == [2500, 3000, 4200]
    assert list(s.submission) == [0, 200, 300] and list(s.state) == ["COMPLETED"] * 3
    assert [s.hosts[h] for h in s.host] == ["H", "H-0", "H"]  # the last host while running, not the "" after
    assert s.interval_ms == 1000 and s.finished.all()
    cpu = odr.task_cpu(s)
    # t1 on H at 2400 MHz over [0, 2500) and t3 over [3000, 4200): MHz x ms
    assert cpu.unit == "mhz_ms" and cpu.hosts["H"][2].sum() == pytest.approx(2400 * 2500 + 2400 * 1200)
    assert cpu.hosts["H-0"][2].sum() == pytest.approx(4800 * 2000)
    assert odr.find_output(out)[0] == task and odr.find_output(task)[0] == task


def test_reader_handles_unfinished_tasks_and_string_ids(tmp_path):
    tasks = _three_tasks()
    tasks[2].update(sched=None, fin=None)  # never placed: no host, no times
    out = write_opendc_output(tmp_path, tasks)
    s = odr.read_tasks(odr.find_output(out)[0])
    assert s.host[2] == -1 and math.isnan(s.finish[2]) and list(s.finished) == [True, True, False]
    t = pq.read_table(odr.find_output(out)[0])
    t = t.set_column(2, "task_id", pa.array([str(x) for x in t["task_id"].to_pylist()]))  # later OpenDC: strings
    pq.write_table(t, tmp_path / "str.parquet")
    s2 = odr.read_tasks(tmp_path / "str.parquet")
    assert not s2.key_is_int and list(s2.key) == ["0", "1", "2"] and list(s2.name) == ["t1", "t2", "t3"]


def test_find_output_errors(tmp_path):
    with pytest.raises(BadInput, match="no task.parquet"):
        odr.find_output(tmp_path)
    for k in (0, 1):
        d = tmp_path / f"seed={k}"
        d.mkdir()
        pq.write_table(opendc_task_table(_three_tasks()), d / "task.parquet")
    with pytest.raises(BadInput, match="2 task.parquet files"):
        odr.find_output(tmp_path)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(BadInput, match="not OpenDC's task table"):
        odr.read_tasks(tmp_path / "bad.parquet")


def test_host_table_cpu(tmp_path):
    rows = [dict(timestamp=ts, timestamp_absolute=ts, host_name="H", cluster_name="c", core_count=4,
                 mem_capacity=1, cpu_capacity=4 * 2400.0, cpu_usage=u, cpu_utilization=u / 9600)
            for ts, u in ((1000, 2400.0), (2000, 4800.0), (3000, 0.0))]
    write_opendc_output(tmp_path, _three_tasks(), host_rows=rows)
    task, host = odr.find_output(tmp_path)
    assert host is not None
    c = odr.host_cpu(host)
    s, e, a = c.hosts["H"]
    assert list(s) == [0, 1000, 2000] and list(e) == [1000, 2000, 3000]
    assert list(a) == pytest.approx([1000.0, 2000.0, 0.0])  # 1 core then 2 cores, x 1000 ms


# ---- the whole comparison on a parsed run ----


@pytest.fixture
def run(tmp_path):
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(nodes=2, tasks=30, capacity=2, cores=2,
                                                           arrival_ms=(0, 150), task_ms=(800, 2500)))
    audit.parse_and_audit(truth.run_dir, with_plots=False)
    return truth.run_dir


def _mirror(run_dir: Path, start_key: str = "ts_dispatch", shift=lambda k, t: 0, host=lambda n: n,
            drop: int = 0) -> list[dict]:
    """The simulation a perfect simulator would produce of the run (optionally shifted per task)."""
    invs = svr.real_tasks(reader.open_cts(run_dir).invocations())
    nodes = {n["node_id"]: n for n in reader.open_cts(run_dir).nodes()}
    r0 = min(i["ts_enqueue"] for i in invs)
    out = []
    for k, i in enumerate(invs[drop:]):
        d = shift(k, i)
        dur = i["ts_end"] - i["ts_start"]
        sched = i[start_key] - r0 + d
        mhz = i["cpu_ms"] / max(dur, 1) * nodes[i["node_id"]]["cpu_freq_mhz"]
        out.append(dict(id=k + drop, name=i["trace_id"], host=host(i["node_id"]), sub=i["ts_enqueue"] - r0,
                        sched=sched, fin=sched + (i["ts_end"] - i[start_key]), mhz=mhz,
                        cpu_count=i.get("cpu_units") or 1))
    return out


def test_a_faithful_simulation_passes(run, tmp_path):
    od = write_opendc_output(tmp_path / "od", _mirror(run), interval_ms=100)
    res = svr.compare(od, run, tmp_path / "rep")
    v = {c.name: c for c in res.checks}
    assert res.verdict == cm.PASS, [(c.name, c.value) for c in res.checks if c.verdict == cm.FAIL]
    assert "ts_dispatch" in res.report["matching"]["real_start"]  # auto found the slot-from-placement trace
    assert res.metrics["start"]["max_abs"] == 0 and res.metrics["makespan"]["real_ms"] == res.metrics[
        "makespan"]["sim_ms"]
    assert v["task coverage"].verdict == cm.PASS and res.metrics["coverage"]["matched"] == 30
    assert res.report["matching"]["host_map"] == {"node01": "node01", "node02": "node02"}
    assert v["CPU node01 sMAPE"].verdict == cm.PASS and res.metrics["cpu"]["node01"]["pearson"] > 0.95
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["compare_cpu.png", "compare_gantt.png", "compare_report.json", "compare_report.md",
                     "compare_throughput.png"]
    md = (tmp_path / "rep" / "compare_report.md").read_text()
    assert md.startswith("# Sim-vs-real comparison: PASS") and "| makespan |" in md
    js = json.loads((tmp_path / "rep" / "compare_report.json").read_text())
    assert js["verdict"] == "PASS" and js["thresholds"]["cpu_pearson"] == 0.95


def test_exec_start_is_detected_for_an_application_only_trace(run, tmp_path):
    od = write_opendc_output(tmp_path / "od", _mirror(run, start_key="ts_start"), interval_ms=100)
    res = svr.compare(od, run, tmp_path / "rep", plots=False)
    assert "ts_start" in res.report["matching"]["real_start"] and res.metrics["start"]["max_abs"] == 0
    forced = svr.compare(od, run, tmp_path / "rep2", plots=False, real_start="dispatch")
    assert forced.metrics["start"]["max_abs"] > 0


def test_a_late_simulation_fails_with_the_right_numbers(run, tmp_path):
    od = write_opendc_output(tmp_path / "od", _mirror(run, shift=lambda k, i: 7000 if k >= 25 else 0),
                             interval_ms=100)
    res = svr.compare(od, run, tmp_path / "rep", plots=False)
    v = {c.name: c.verdict for c in res.checks}
    assert res.verdict == cm.FAIL and v["makespan"] == cm.FAIL
    ms = res.metrics["makespan"]
    assert ms["sim_ms"] - ms["real_ms"] == pytest.approx(7000, abs=2500)  # the late tail decides the makespan
    assert res.metrics["start"]["max_abs"] == 7000 and res.metrics["start"]["p50_abs"] == 0


def test_hosts_named_by_opendc_are_mapped_by_their_tasks(run, tmp_path):
    # one host entry "H" with count 2: OpenDC names them H and H-0 (createUniqueName)
    od = write_opendc_output(tmp_path / "od", _mirror(run, host=lambda n: {"node01": "H-0", "node02": "H"}[n]),
                             interval_ms=100)
    res = svr.compare(od, run, tmp_path / "rep", plots=False)
    assert res.report["matching"]["host_map"] == {"node01": "H-0", "node02": "H"}
    assert res.verdict == cm.PASS


def test_matching_by_dense_id_without_names(run, tmp_path):
    od = write_opendc_output(tmp_path / "od", _mirror(run), interval_ms=100, named=False)
    res = svr.compare(od, run, tmp_path / "rep", plots=False)
    assert "dense id" in res.report["matching"]["how"] and res.verdict == cm.PASS
    opendc.export(run, tmp_path / "trace")
    res2 = svr.compare(od, run, tmp_path / "rep2", plots=False, trace_dir=tmp_path / "trace")
    assert "exported tasks.parquet" in res2.report["matching"]["how"] and res2.verdict == cm.PASS


def test_missing_tasks_fail_coverage(run, tmp_path):
    od = write_opendc_output(tmp_path / "od", _mirror(run, drop=2), interval_ms=100)
    res = svr.compare(od, run, tmp_path / "rep", plots=False)
    cov = {c.name: c for c in res.checks}["task coverage"]
    assert cov.verdict == cm.FAIL and res.metrics["coverage"]["real_unmatched"] == 2


def test_a_simulation_of_another_run_is_refused(run, tmp_path):
    tasks = _mirror(run)
    for t in tasks:
        t["name"] = "other-" + t["name"]
    od = write_opendc_output(tmp_path / "od", tasks, interval_ms=100)
    with pytest.raises(BadInput, match="no simulated task matches"):
        svr.compare(od, run, tmp_path / "rep", plots=False)


def test_command_strict_and_summary(run, tmp_path):
    good = write_opendc_output(tmp_path / "good", _mirror(run), interval_ms=100)
    out = run_script("compare_opendc.py", "--opendc", str(good), "--input", str(run), "--no-plots",
                     "--strict")
    assert out.returncode == 0, out.stderr
    assert "compare: PASS" in out.stdout and "makespan" in out.stdout
    bad = write_opendc_output(tmp_path / "bad", _mirror(run, shift=lambda k, i: 9000), interval_ms=100)
    out = run_script("compare_opendc.py", "--opendc", str(bad), "--input", str(run), "--no-plots")
    assert out.returncode == 0 and "compare: FAIL" in out.stdout  # a FAIL alone does not change the exit code
    out = run_script("compare_opendc.py", "--opendc", str(bad), "--input", str(run), "--no-plots", "--strict")
    assert out.returncode == 1 and "check(s) FAIL" in out.stderr and "Traceback" not in out.stderr
    out = run_script("compare_opendc.py", "--opendc", str(bad), "--input", str(run), "--no-plots",
                     "--makespan-abs-s", "20", "--wait-p50", "100", "--wait-p95", "100", "--wait-p99", "100",
                     "--ks-alpha", "0", "--throughput-rmse", "1")
    assert "FAIL  makespan" not in out.stdout
    out = run_script("compare_opendc.py", "--opendc", str(tmp_path / "nothing"), "--input", str(run))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
