"""Replay check (trace/replay.py, trace/replay_io.py): OpenDC's scheduling rules on small hand-built traces, the
SDK-model reader, the task.parquet schema, the audit section, and 100 k tasks in well under 30 s."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracekit.core.errors import BadInput
from tracekit.trace import replay as rp
from tracekit.trace import replay_io as rio

T0 = 1_700_000_000_000
FIRST_FIT = rp.Policy((rp.HostFilterSpec("vcpu", 1.0), rp.HostFilterSpec("ram", 1.0)))


def tasks(*rows, names=None) -> rp.Tasks:
    """rows: (submission offset ms, runtime ms, cores[, mem KB[, fragments]])."""
    n = len(rows)
    col = lambda i, d: np.array([r[i] if len(r) > i else d for r in rows])  # noqa: E731
    return rp.Tasks(np.arange(n, dtype=np.int32), names or [f"t{i}" for i in range(n)],
                    T0 + col(0, 0).astype(np.int64), col(1, 0).astype(np.int64), col(2, 1).astype(np.int32),
                    col(2, 1).astype(np.float64) * 2000.0, col(3, 1000).astype(np.int64), col(4, 1).astype(np.int64),
                    col(1, 0).astype(np.float64) * 1000.0)


def hosts(*cores, mem=16384, types=None) -> list[rp.Host]:
    return [rp.Host(f"h{i}", (types or ["H"] * len(cores))[i], c, 2000.0, mem) for i, c in enumerate(cores)]


def run(tk, hs, policy=FIRST_FIT, q=1):
    return rp.simulate(tk, hs, policy, q)


# --- scheduling rules -------------------------------------------------------------------------------------------


def test_fifo_head_of_line_blocking():
    # h0 has 2 cores. t0 (1 core) runs 0..1000; t1 (2 cores) waits for it; t2 (1 core) is behind t1 and waits
    # too, although a core is free from 20 to 1000 (strict FIFO: only the head is considered)
    r = run(tasks((0, 1000, 1), (10, 500, 2), (20, 100, 1)), hosts(2))
    assert list(r.schedule) == [0, 1000, 1500]
    assert list(r.finish) == [1000, 1500, 1600]
    assert r.state == [rp.COMPLETED] * 3


def test_quantum_next_whole_second_after_capacity_frees():
    tk = tasks((0, 1500, 2), (100, 300, 2), (2000, 100, 1))
    r1 = run(tk, hosts(2), q=1)
    assert list(r1.schedule) == [0, 1500, 2000]
    r = run(tk, hosts(2), q=1000)
    # t0 at 0 (on the grid); t1 queued at 100, capacity frees at 1500 -> next whole second 2000; t2 at 2000 waits
    # for t1 (2 cores) to finish at 2300 -> 3000
    assert list(r.schedule) == [0, 2000, 3000]
    assert list(r.finish) == [1500, 2300, 3100]
    assert r.makespan_ms() == 3100


def test_submission_order_stable_on_equal_times_and_shifted_by_first():
    # file order 2, 0, 1 by time; equal times keep file order; simulated time 0 = the first submission
    tk = tasks((500, 100, 1), (500, 100, 1), (200, 100, 1))
    r = run(tk, hosts(1))
    assert r.origin_ms == T0 + 200
    assert list(r.submit) == [300, 300, 0]
    assert list(r.schedule) == [300, 400, 0]  # task 0 before task 1 (file order), one core


def test_oversize_task_terminated_and_queue_moves_on():
    tk = tasks((0, 100, 4), (0, 100, 1), (0, 100, 1, 99_000_000))  # 4 cores > any host; 99 GB > any host
    r = run(tk, hosts(2, 2))
    assert r.state == [rp.TERMINATED, rp.COMPLETED, rp.TERMINATED]
    assert r.schedule[0] == -1 and r.finish[0] == 0 and r.schedule[1] == 0
    f = rp.figures(r, *(np.array(x, dtype=np.int64) for x in ([T0, T0, T0], [T0 + 100] * 3, [T0] * 3)))
    assert rp.verdict(f)[0] == rp.FAIL and "terminated" in rp.verdict(f)[1]


def test_fits_no_single_host_waits_forever():
    # 3 cores fit the 4-core host's core count, 20 GB fits the big-memory host: no single host has both
    hs = [rp.Host("a", "A", 4, 2000.0, 1024), rp.Host("b", "B", 2, 2000.0, 32768)]
    r = run(tasks((0, 100, 3, 20_000_000), (10, 100, 1)), hs)
    assert r.state == [rp.STUCK, rp.STUCK] and r.stuck == 2


def test_task_without_fragments_dropped():
    r = run(tasks((0, 100, 1, 1000, 0), (5, 100, 1)), hosts(1))
    assert r.state == [None, rp.COMPLETED] and r.dropped == 1
    assert r.origin_ms == T0 + 5  # the first submission of what OpenDC loads


def test_first_fit_prefers_used_host_then_first_empty_and_empties_go_to_the_back():
    # no weighers: used hosts that fit come first; an empty host is the first of its type's list; a host that
    # becomes empty again goes to the back of that list (FilterScheduler.setHostEmpty), unlike Tracekit's first-fit
    tk = tasks((0, 100, 1), (1, 500, 1), (2, 50, 2), (200, 10, 1))
    r = run(tk, hosts(2, 2, 2))
    h = list(r.host)
    assert h[0] == 0 and h[1] == 0  # t1 joins the used h0
    assert h[2] == 1  # 2 cores: h0 has 1 free -> first empty host h1
    # at 200: h0 still runs t1 (until 501) with 1 free core -> used host first
    assert h[3] == 0
    tk2 = tasks((0, 100, 2), (200, 10, 2))
    r2 = run(tk2, hosts(2, 2, 2))
    assert list(r2.host) == [0, 1]  # h0 emptied at 100 and went behind h1, h2


def test_one_empty_candidate_per_host_type():
    # empty hosts are grouped by type (the topology entry's name); only the first of each type is a candidate
    hs = hosts(1, 1, 1, types=["A", "A", "B"])
    pol = rp.Policy(FIRST_FIT.filters, (rp.WeigherSpec("instanceCount", -1.0),))
    r = run(tasks((0, 1000, 1), (1, 1000, 1), (2, 1000, 1)), hs, pol)
    assert sorted(r.host) == [0, 1, 2]


def test_vcpu_filter_allocation_ratio():
    tk = tasks((0, 1000, 2), (1, 1000, 2), (2, 1000, 2), (3, 1000, 3))
    r = run(tk, hosts(2), rp.Policy((rp.HostFilterSpec("vcpu", 2.0),)))
    # 2 cores x 2.0 = 4 provisioned cores: two 2-core tasks share h0, the third waits; a 3-core task never fits
    # (more than the host's cores: no overcommit against itself) -> terminated
    assert list(r.schedule[:3]) == [0, 1, 1000]
    assert r.state[3] == rp.TERMINATED
    r1 = run(tasks((0, 1000, 2), (1, 1000, 2)), hosts(2), FIRST_FIT)
    assert list(r1.schedule) == [0, 1000]


def test_ram_filter_uses_mb_of_kb_over_1000_against_mib():
    # 2 MiB host; a task of 2000 KB = 2 MB fits once, the second waits for memory, not cores
    hs = [rp.Host("h", "H", 8, 2000.0, 2)]
    r = run(tasks((0, 100, 1, 2000), (0, 100, 1, 1500)), hs)
    assert list(r.schedule) == [0, 100]
    assert list(tasks((0, 1, 1, 1499), (0, 1, 1, 1500)).mem_mb) == [1, 2]  # roundToLong: half up


@pytest.mark.parametrize("mult, expect", [(1.0, [0, 1, 1]), (-1.0, [0, 1, 0])])
def test_instance_count_weigher_multiplier_sign(mult, expect):
    # OpenDC's arithmetic, step by step (one host type, so one empty candidate):
    # t0 (3 cores): one candidate h0 of weight 0 -> range = Double.MIN_VALUE, weights[0] = inf x 0 = NaN -> h0
    # t1 (2 cores): h0 has 1 core left -> one candidate, the empty h1 -> h1
    # t2 (1 core): candidates [h0 (1 instance), h1 (1 instance), h2 (empty, 0)]: factor = multiplier / 1;
    #   +1: weights[1] = 1 > MIN_VALUE -> h1;  -1: weights[1] = -1, weights[2] = 0: nothing beats MIN_VALUE -> h0
    pol = rp.Policy(FIRST_FIT.filters, (rp.WeigherSpec("instanceCount", mult),))
    r = run(tasks((0, 5000, 3), (1, 5000, 2), (2, 5000, 1)), hosts(4, 4, 4), pol)
    assert list(r.host) == expect


@pytest.mark.parametrize("mult, expect", [(1.0, [0, 1]), (-1.0, [0, 0])])
def test_vcpu_weigher_sign(mult, expect):
    # weight = 1 - provisioned cores: + prefers the less provisioned (empty) host, - the more provisioned one
    pol = rp.Policy(FIRST_FIT.filters, (rp.WeigherSpec("vcpu", mult),))
    r = run(tasks((0, 5000, 1), (1, 5000, 1)), hosts(4, 4, types=["A", "B"]), pol)
    assert list(r.host) == expect


def test_ram_weigher_default_prefab_mem_spreads_by_free_memory():
    pol = rp.DEFAULT_POLICY
    assert [f.kind for f in pol.filters] == ["vcpu", "ram"] and pol.weighers == (rp.WeigherSpec("ram", 1.0),)
    r = run(tasks((0, 5000, 1, 4_000_000), (1, 5000, 1, 1000)), hosts(4, 4, types=["A", "B"]), pol)
    assert list(r.host) == [0, 1]  # the empty host has more free memory


def test_weigher_state_is_not_reset_between_calls():
    # OpenDC's FilterScheduler accumulates its weights array across calls (by candidate position): a single
    # candidate of weight 0 makes range = Double.MIN_VALUE and poisons position 0 with NaN, so later calls can
    # never pick position 0 by weight; the replay does the same arithmetic.
    s = rp.FilterScheduler(hosts(4, 4, types=["A", "B"]), rp.Policy(FIRST_FIT.filters,
                                                                   (rp.WeigherSpec("instanceCount", 1.0),)))
    v = s.select(1, 1)
    assert v.idx == 0 and np.isnan(s.weights[0]) and np.isnan(s.weights[1])


def test_big_trace_under_budget():
    rng = np.random.default_rng(1)
    n = 100_000
    sub = np.sort(rng.integers(0, 3_600_000, n))
    rows = list(zip(sub.tolist(), rng.integers(50, 8000, n).tolist(), rng.integers(1, 3, n).tolist()))
    tk = tasks(*rows)
    t = time.perf_counter()
    r = rp.simulate(tk, hosts(*([4] * 8)), FIRST_FIT, 1000)
    took = time.perf_counter() - t
    assert r.state.count(rp.COMPLETED) == n
    assert took < 15, f"100 k tasks took {took:.1f} s"


# --- files ------------------------------------------------------------------------------------------------------


def test_units():
    assert rio.frequency_mhz("2.4454 GHz") == pytest.approx(2445.4)
    assert rio.frequency_mhz("2600 MHz") == 2600.0 and rio.frequency_mhz(" 3 ghz ") == 3000.0
    assert rio.size_mib("24105 MiB") == 24105.0 and rio.size_mib("16 GiB") == 16384.0
    assert rio.size_mib("1 GB") == pytest.approx(1e9 / 2 ** 20) and rio.size_mib(512) == 512.0
    with pytest.raises(BadInput):
        rio.size_mib("16 parsecs")


def _write_trace(d: Path, rows, frag_rows):
    d.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    pq.write_table(pa.table({
        "id": pa.array(range(n), pa.int32()), "submission_time": pa.array([T0 + r[0] for r in rows], pa.int64()),
        "duration": pa.array([r[1] for r in rows], pa.int64()), "cpu_count": pa.array([r[2] for r in rows], pa.int32()),
        "cpu_capacity": pa.array([2600.0 * r[2] for r in rows]), "mem_capacity": pa.array([1000] * n, pa.int64()),
        "name": [f"t{i}" for i in range(n)]}), d / "tasks.parquet")
    pq.write_table(pa.table({"id": pa.array([f[0] for f in frag_rows], pa.int32()),
                             "duration": pa.array([f[1] for f in frag_rows], pa.int64()),
                             "cpu_usage": pa.array([f[2] for f in frag_rows], pa.float64())}), d / "fragments.parquet")


SDK_TOPOLOGY = {"clusters": [{"name": "tracekit", "hosts": [
    {"name": "node1", "count": 1, "cpu": {"coreCount": 2, "coreSpeed": "2.6 GHz"}, "memory": {"size": "24105 MiB"}},
    {"name": "big", "count": 2, "cpu": {"coreCount": 2, "coreSpeed": "2.6 GHz", "count": 2},
     "memory": {"size": "16 GiB"}}]}]}


def _experiment(d: Path, policies=None, topology=SDK_TOPOLOGY) -> Path:
    (d / "topology.json").write_text(json.dumps(topology))
    exp = {"name": "e1", "topologies": [{"importFrom": "topology.json"}],
           "workloads": [{"type": "trace", "source": {"type": "named", "name": f"../{d.name}"},
                          "scalingPolicy": "NoDelay"}]}
    if policies is not None:
        exp["allocationPolicies"] = policies
    (d / "experiment.json").write_text(json.dumps(exp))
    return d / "experiment.json"


def test_read_experiment_sdk_model(tmp_path):
    d = tmp_path / "opendc"
    d.mkdir()
    e = rio.read_experiment(_experiment(d, [{"type": "filter", "filters": [
        {"type": "vcpu", "allocationRatio": 1.5}, {"type": "ram", "allocationRatio": 1.0}],
        "weighers": [{"type": "instanceCount", "multiplier": -1.0}], "subsetSize": 1}]))
    assert [(h.name, h.type, h.cores, h.mem_mib) for h in e.hosts] == [
        ("node1", "node1", 2, 24105), ("big", "big", 4, 16384), ("big-0", "big", 4, 16384)]
    assert e.hosts[0].core_mhz == pytest.approx(2600.0)
    assert e.policy.filters[0] == rp.HostFilterSpec("vcpu", 1.5)
    assert e.policy.weighers == (rp.WeigherSpec("instanceCount", -1.0),)
    assert e.workload == d.resolve() and e.name == "e1"
    assert rio.read_experiment(_experiment(d)).policy == rp.DEFAULT_POLICY  # no policy: prefab Mem
    assert rio.read_experiment(_experiment(d, [{"type": "prefab", "prefabName": "ActiveServers"}])).policy.weighers \
        == (rp.WeigherSpec("instanceCount", -1.0),)


def test_import_local_keys_win_and_cycles_are_errors(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps({"name": "h", "count": 9, "cpu": {"coreCount": 8,
                                                    "coreSpeed": "2 GHz"}, "memory": {"size": "8 GiB"}}))
    topo = {"clusters": [{"hosts": [{"importFrom": "host.json", "count": 2}]}]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.json").write_text(json.dumps({**topo, "clusters": [{"hosts": [
        {"importFrom": "../host.json", "count": 2}]}]}))
    (tmp_path / "e.json").write_text(json.dumps({"topologies": [{"importFrom": "sub/t.json"}],
                                                 "workloads": [{"type": "trace"}]}))
    hs = rio.read_experiment(tmp_path / "e.json").hosts
    assert [h.name for h in hs] == ["h", "h-0"] and hs[0].cores == 8
    (tmp_path / "a.json").write_text(json.dumps({"importFrom": "a.json"}))
    (tmp_path / "e2.json").write_text(json.dumps({"topologies": [{"importFrom": "a.json"}], "workloads": [{}]}))
    with pytest.raises(BadInput, match="imports itself"):
        rio.read_experiment(tmp_path / "e2.json")


def test_legacy_experiment_one_line_error(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"topologies": [{"pathToFile": "topology.json"}],
                                                          "workloads": [{"type": "trace"}]}))
    with pytest.raises(BadInput, match="legacy experiment") as ei:
        rio.read_experiment(tmp_path / "experiment.json")
    assert "\n" not in str(ei.value)


def test_unsupported_policy_parts_are_errors(tmp_path):
    for pol, msg in (({"type": "prefab", "prefabName": "Random"}, "not modelled"),
                     ({"type": "filter", "filters": [{"type": "sameHost"}]}, "not modelled"),
                     ({"type": "filter", "weighers": [{"type": "coreRam"}]}, "not modelled"),
                     ({"type": "filter", "subsetSize": 3}, "subsetSize")):
        with pytest.raises(BadInput, match=msg):
            rio.allocation_policy(pol, "x")


def test_run_replay_writes_opendc_task_parquet_and_report_section(tmp_path):
    run = tmp_path / "run"
    d = run / "opendc"
    # t0: 2 fragments (600 + 400 ms), t1 one fragment; node1 (2 cores) is the first host
    _write_trace(d, [(0, 1000, 2), (100, 300, 2)], [(0, 600, 5200.0), (0, 400, 2600.0), (1, 300, 1000.0)])
    _experiment(d, [{"type": "filter", "filters": [{"type": "vcpu", "allocationRatio": 1.0},
                                                   {"type": "ram", "allocationRatio": 1.0}], "subsetSize": 1}],
                {"clusters": [{"hosts": [SDK_TOPOLOGY["clusters"][0]["hosts"][0]]}]})
    cts = run / "CTS"
    cts.mkdir()
    invs = [{"trace_id": "t0", "attempt": 1, "status": "ok", "pid": 1, "ts_enqueue": T0, "ts_dispatch": T0,
             "ts_start": T0, "ts_end": T0 + 1000},
            {"trace_id": "t1", "attempt": 1, "status": "ok", "pid": 2, "ts_enqueue": T0 + 100,
             "ts_dispatch": T0 + 1000, "ts_start": T0 + 1000, "ts_end": T0 + 1300}]
    (cts / "invocations.jsonl").write_text("".join(json.dumps(i) + "\n" for i in invs))
    (cts / "audit_report.md").write_text("# Audit report\n\nOverall: **PASS**\n")
    res = rio.run_replay(d)
    assert res.verdict == rp.PASS and res.figures["1ms"].makespan_err == 0.0
    assert res.figures["1s"].start_pct(0.95) == 0  # t1 placed at 1000 ms, already on the grid
    out = run / "opendc-replay" / "1s" / "e1" / "raw-output" / "0" / "seed=0" / "task.parquet"
    t = pq.read_table(out)
    assert t.schema == rio.TASK_OUTPUT_SCHEMA
    sch = pq.ParquetFile(out).schema
    phys = {sch.column(i).name: (sch.column(i).physical_type, sch.column(i).max_definition_level == 0)
            for i in range(len(sch))}
    assert phys["task_id"] == ("INT32", True) and phys["cpu_usage"] == ("FLOAT", True)
    assert phys["timestamp"] == ("INT64", True) and phys["schedule_time"] == ("INT64", False)
    assert phys["task_name"] == ("BYTE_ARRAY", True) and phys["task_state"] == ("BYTE_ARRAY", False)
    rows = t.to_pylist()
    assert [(r["task_name"], r["host_name"], r["schedule_time"], r["finish_time"], r["task_state"]) for r in rows] \
        == [("t0", "node1", 0, 1000, "COMPLETED"), ("t1", "node1", 1000, 1300, "COMPLETED")]
    assert rows[1]["submission_time"] == T0 + 100 and rows[1]["scheduling_delay"] == 900
    assert rows[0]["timestamp_absolute"] == T0 + 1000 and rows[0]["uptime"] == 1000
    assert rows[0]["cpu_usage"] == pytest.approx((5200 * 600 + 2600 * 400) / 1000)
    report = (cts / "audit_report.md").read_text()
    assert "## Replay (OpenDC rules): PASS" in report
    rio.run_replay(d)  # a second run replaces the section
    assert (cts / "audit_report.md").read_text().count("## Replay (OpenDC rules)") == 1
    summary = json.loads((run / "opendc-replay" / "replay.json").read_text())
    assert summary["verdict"] == "PASS" and summary["grids"]["1ms"]["start_err_p95_ms"] == 0


def test_splice_goes_before_the_plots_and_replaces_itself(tmp_path):
    p = tmp_path / "audit_report.md"
    p.write_text("# Audit\n\n## Outcomes: PASS\n\nok\n\n## Plots\n\n### Gantt\n")
    rio.splice_report(p, "## Replay (OpenDC rules): WARN\n\nx\n")
    rio.splice_report(p, "## Replay (OpenDC rules): PASS\n\ny\n")
    text = p.read_text()
    assert text.count("## Replay") == 1 and "PASS" in text and text.index("## Replay") < text.index("## Plots")


def test_placement_agreement_names_the_differences_only_when_placements_differ():
    hosts = [rp.Host("node1", "node1", 2, 2600.0, 1024), rp.Host("node2", "node2", 2, 2600.0, 1024)]
    res = SimpleNamespace(hosts=hosts, host=np.array([0, 1, 1, -1]))
    line = rio.placement_agreement(res, ["node1", "node1", "node2", None], ["weigher x: why"])
    assert line.startswith("placement: 2 of 3 task(s)") and "why" in line
    assert "why" not in rio.placement_agreement(res, ["node1", "node2", "node2", None], ["weigher x: why"])
