"""OpenDC export, pure parts: physical ceilings, the slot's lead/trail fragments, the policy mapping (no I/O)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tracekit.trace.export import fragments as fr
from tracekit.trace.export import opendc


def test_ceiling_is_cpu_units_when_exclusive_else_the_node():
    assert fr.ceiling_cores(1, 4, "exclusive", "affinity") == 1.0
    assert fr.ceiling_cores(2, 4, "exclusive", None) == 2.0
    assert fr.ceiling_cores(8, 4, "exclusive", "cgroup-v2") == 4.0  # never above the node
    assert fr.ceiling_cores(1, 4, "exclusive", "none") == 4.0  # binding not enforced
    assert fr.ceiling_cores(1, 4, "shared", "cgroup-v2") == 4.0
    assert fr.ceiling_cores(2, None, None, None) == 2.0


def test_tail_spike_is_spread_to_the_nearest_rows_and_the_total_stays_exact():
    # 1 core, rows of 200 ms at 60 %, then a 3 ms tail carrying 30 ms of CPU (10x the ceiling)
    dt = np.array([200, 200, 200, 3])
    cpu = np.array([120_000, 120_000, 120_000, 30_000])
    f = fr.fit_to_ceiling(cpu, fr.row_caps_us(dt, 1.0))
    assert int(f.cpu_us.sum()) == int(cpu.sum())
    assert (f.cpu_us <= fr.row_caps_us(dt, 1.0)).all()
    assert f.cpu_us[3] == 3000 and f.cpu_us[2] == 120_000 + 27_000, "the nearest (earlier) row takes it first"
    assert f.cpu_us[0] == f.cpu_us[1] == 120_000 and f.moved_us == 27_000 and f.over_us == 0


def test_excess_fills_neighbours_to_their_ceiling_then_goes_further():
    dt = np.array([10, 10, 10, 10, 10])
    cpu = np.array([9_000, 9_000, 40_000, 9_000, 9_000])  # the middle row is 30 ms over; 1 ms room in each other
    caps = fr.row_caps_us(dt, 1.0)
    f = fr.fit_to_ceiling(cpu, caps)
    # 4 ms of room only: the rest cannot fit -> spread above the ceilings by length, reported
    assert int(f.cpu_us.sum()) == int(cpu.sum()) and f.over_us == 26_000 and f.moved_us == 4_000


def test_random_rows_keep_exact_totals_and_respect_ceilings_when_possible():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 12)
        dt = np.array([rng.choice([1, 2, 5, 13, 100, 200]) for _ in range(n)])
        cores = rng.choice([1.0, 2.0, 4.0])
        caps = fr.row_caps_us(dt, cores)
        cpu = np.array([rng.randint(0, int(c * rng.choice([0.5, 1, 3, 10])) + 1) for c in caps])
        f = fr.fit_to_ceiling(cpu, caps)
        assert int(f.cpu_us.sum()) == int(cpu.sum())
        assert (f.cpu_us >= 0).all()
        if cpu.sum() <= caps.sum():
            assert (f.cpu_us <= caps).all() and f.over_us == 0
        else:
            assert f.over_us == int(cpu.sum() - caps.sum())


def test_slot_adds_lead_and_trail_of_measured_length_and_never_zero_length():
    dt = np.array([200, 150])
    cpu = np.array([100_000, 50_000])
    s = fr.slot_rows(dt, cpu, 1.0, lead_ms=313, trail_ms=40)
    assert list(s.dt_ms) == [313, 200, 150, 40] and list(s.cpu_us) == [0, 100_000, 50_000, 0]
    s = fr.slot_rows(dt, cpu, 1.0, lead_ms=0, trail_ms=0)
    assert list(s.dt_ms) == [200, 150], "no zero-length fragment"
    # more CPU than the run can hold: the trail, then the lead take it (within their ceiling) before any overflow
    s = fr.slot_rows(np.array([10]), np.array([14_000]), 1.0, lead_ms=2, trail_ms=3)
    assert list(s.dt_ms) == [2, 10, 3] and list(s.cpu_us) == [1_000, 10_000, 3_000] and s.over_us == 0
    s = fr.slot_rows(np.array([10]), np.array([20_000]), 1.0, lead_ms=2, trail_ms=3)
    assert int(s.cpu_us.sum()) == 20_000 and s.over_us == 5_000
    with pytest.raises(ValueError):
        fr.slot_rows(np.array([0]), np.array([0]), 1.0)


def test_vectorised_edges_match_the_per_task_slot():
    rng = random.Random(3)
    ids, dts, cpus = [], [], []
    lead = np.array([rng.choice([0, 5, 300]) for _ in range(20)])
    trail = np.array([rng.choice([0, 1, 40]) for _ in range(20)])
    per_task = []
    for t in range(20):
        k = rng.randint(1, 4)
        d = np.array([rng.randint(1, 200) for _ in range(k)])
        c = np.array([rng.randint(0, x * 1000) for x in d])
        ids += [t] * k
        dts.append(d)
        cpus.append(c)
        per_task.append(fr.slot_rows(d, c, 1.0, lead[t], trail[t]))
    i2, d2, c2 = fr.insert_slot_edges(np.array(ids), np.concatenate(dts), np.concatenate(cpus), lead, trail)
    assert list(d2) == list(np.concatenate([s.dt_ms for s in per_task]))
    assert list(c2) == list(np.concatenate([s.cpu_us for s in per_task]))
    assert list(i2) == [t for t, s in enumerate(per_task) for _ in s.dt_ms]


# never a negative multiplier: OpenDC's FilterScheduler starts its best weight at Double.MIN_VALUE, so a negative
# one picks the first candidate (first-fit) instead of the run's weigher
@pytest.mark.parametrize("weigher,order,kind,mult", [
    ("instances", "min", "vcpu", 1.0), ("instances", "max", "instanceCount", 1.0),
    ("vcpu", "min", "vcpu", 1.0), ("vcpu", "max", "instanceCount", 1.0)])
def test_policy_mapping_weighers_and_signs(weigher, order, kind, mult):
    p = opendc.allocation_policy(weigher, order, 1.5)
    assert p["type"] == "filter" and p["subsetSize"] == 1
    assert p["filters"] == [{"type": "vcpu", "allocationRatio": 1.5}, {"type": "ram", "allocationRatio": 1.0}]
    assert p["weighers"] == [{"type": kind, "multiplier": mult}]
    assert opendc.policy_differences(weigher, order)[0].startswith(f"weigher {weigher}/{order}")


def test_policy_mapping_first_fit_and_slots():
    p = opendc.allocation_policy("", "min", 1.0, parallel=3)
    assert p["weighers"] == [] and p["filters"][-1] == {"type": "instanceCount", "limit": 3}
    assert "no exact equivalent of first-fit" in opendc.policy_differences("", "min")[0]
    with pytest.raises(ValueError):
        opendc.allocation_policy("nope", "min", 1.0)
    with pytest.raises(ValueError):
        opendc.allocation_policy("", "min", 0)


def test_export_ratio_reproduces_every_workers_capacity():
    nodes = [{"node_id": "a", "cpu_cores": 2, "capacity": 3, "allocation_ratio": 1.5},
             {"node_id": "b", "cpu_cores": 4, "capacity": 6, "allocation_ratio": 1.5}]
    assert opendc.export_ratio(nodes) == (1.5, [])
    # floor(1.7 x 3) = 5 and 1.7 x 3 = 5.1: the same decisions as capacity 5
    assert opendc.export_ratio([{"node_id": "a", "cpu_cores": 3, "capacity": 5, "allocation_ratio": 1.7}])[0] == 1.7
    r, notes = opendc.export_ratio([{"node_id": "a", "cpu_cores": 2, "capacity": 2, "allocation_ratio": 1.0},
                                    {"node_id": "b", "cpu_cores": 2, "capacity": 4, "allocation_ratio": 2.0}])
    assert notes and "no single allocation ratio" in notes[0]


def test_export_interval_suits_the_run():
    assert opendc.export_interval_s(25_000) == 1
    assert opendc.export_interval_s(3_600_000) == 15
    assert opendc.export_interval_s(10 ** 9) == 3600


def test_shared_hosts_finds_nodes_on_one_kernel():
    from tracekit.trace.vocabulary import shared_hosts

    emu = [{"node_id": f"n{i}", "stage": "emu", "hostname": f"n{i}", "boot_time_ms": 1000.0 + i * 15}
           for i in range(3)]
    assert shared_hosts(emu) == [["n0", "n1", "n2"]]
    cloud = [{"node_id": f"c{i}", "stage": "cloud", "hostname": f"c{i}", "boot_time_ms": 1000.0} for i in range(2)]
    assert shared_hosts(cloud) == [], "different machines booted in the same second"
    plain = [{"node_id": "a", "hostname": "box", "boot_time_ms": None}, {"node_id": "b", "hostname": "box"}]
    assert shared_hosts(plain) == [["a", "b"]]
