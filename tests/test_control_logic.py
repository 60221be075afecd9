"""Control plane, pure logic: placement + weighers, cpuset allocation, mix rounding, capacity."""

from __future__ import annotations

import pytest

from tracekit.control.dispatch import mix_counts, parse_mix, sequence
from tracekit.control.placement import NodeState, apply, choose
from tracekit.control.worker import capacity_for
from tracekit.core.errors import UsageError
from tracekit.node.cpuset import allocate


def N(node, cap, total, rc=0, alive=True, parallel=0, slots=0):
    return NodeState(node, alive, cap, total, rc, parallel, slots)


def test_first_fit_scans_in_node_id_order_and_skips_infeasible():
    nodes = [N("c", 4, 4), N("a", 1, 4, rc=3), N("b", 2, 4, alive=False), N("d", 8, 8)]
    d = choose(nodes, 2)
    assert d.node == "c"  # a lacks capacity, b is dead
    assert [c["node"] for c in d.candidates] == ["c"]
    assert choose(nodes, 1).node == "a"


def test_strict_fifo_scripted_sequence():
    # two nodes of 4 units; sequence 2,2,4,1: the 4 goes to b, then the 1 goes to a? a is full after 2+2.
    nodes = [N("a", 4, 4), N("b", 4, 4)]
    placed = []
    for units in (2, 2, 4, 1):
        d = choose(nodes, units)
        placed.append(d.node)
        if d.node:
            nodes = apply(nodes, d.node, units)
    assert placed == ["a", "a", "b", None]
    assert "head-of-line blocking" in choose(nodes, 1).reason


@pytest.mark.parametrize(
    "weigher, order, expect",
    [
        ("instances", "min", "big"),  # small: 1 task / 2 units = 0.5; big: 2 / 8 = 0.25
        ("instances", "max", "small"),
        ("vcpu", "min", "big"),  # small: 1/2 used; big: 4/8 used -> tie -> node_id order: big
        ("vcpu", "max", "big"),
        ("", "min", "big"),
    ],
)
def test_weighers_normalise_by_cap_total(weigher, order, expect):
    nodes = [N("small", 1, 2, rc=1), N("big", 4, 8, rc=2)]
    d = choose(nodes, 1, weigher, order)
    assert d.node == expect
    if weigher:
        vals = {c["node"]: c["value"] for c in d.candidates}
        assert set(vals) == {"big", "small"}
        assert vals["small"] == 0.5


def test_weigher_vcpu_prefers_less_used_fraction():
    nodes = [N("a", 1, 4), N("b", 6, 8)]  # a: 3/4 used, b: 2/8 used
    assert choose(nodes, 1, "vcpu", "min").node == "b"
    assert choose(nodes, 1, "vcpu", "max").node == "a"


def test_slots_mode_needs_a_token():
    nodes = [N("a", 4, 4, parallel=2, slots=0), N("b", 4, 4, parallel=2, slots=1), N("c", 4, 4)]
    assert choose(nodes, 1).node == "b"
    nodes = [N("a", 4, 4, parallel=2, slots=0)]
    assert "no free slot" in choose(nodes, 1).reason


def test_blocked_reasons():
    assert "no worker registered" in choose([], 1).reason
    assert "no alive worker" in choose([N("a", 4, 4, alive=False)], 1).reason
    assert "largest alive node" in choose([N("a", 2, 2)], 4).reason


def test_cpuset_exclusive_while_free_cores_exist():
    cores = [0, 1, 2, 3]
    a = allocate(cores, {}, 2)
    b = allocate(cores, {"a": a}, 2)
    assert a == [0, 1] and b == [2, 3]
    # over-provisioned: no free core left -> least shared cores, spread
    c = allocate(cores, {"a": a, "b": b}, 1)
    d = allocate(cores, {"a": a, "b": b, "c": c}, 1)
    assert c == [0] and d == [1]
    assert allocate(cores, {"x": [0]}, 8) == [0, 1, 2, 3]


def test_mix_largest_remainder():
    mix = parse_mix("fast1080p=40,medium480p=40,hevc1080p=20")
    assert mix_counts(mix, 5) == {"fast1080p": 2, "medium480p": 2, "hevc1080p": 1}
    mix = parse_mix("fast1080p=1,medium480p=1,hevc1080p=1")
    assert mix_counts(mix, 10) == {"fast1080p": 4, "medium480p": 3, "hevc1080p": 3}  # tie -> written order
    mix = parse_mix("fast1080p=2,medium480p=3,hevc1080p=2,light1c=3")
    c = mix_counts(mix, 20)
    assert c == {"fast1080p": 4, "medium480p": 6, "hevc1080p": 4, "light1c": 6} and sum(c.values()) == 20


def test_sequence_reproducible_including_seed_zero():
    mix = parse_mix("fast1080p=1,light1c=1,hevc1080p=1")
    assert sequence(mix, 30, 0) == sequence(mix, 30, 0)
    assert sequence(mix, 30, 0) != sequence(mix, 30, 1)
    assert sorted(sequence(mix, 30, 7)) == sorted(["fast1080p"] * 10 + ["light1c"] * 10 + ["hevc1080p"] * 10)


@pytest.mark.parametrize("bad", ["", "nope=1", "fast1080p=0", "fast1080p=x", "fast1080p=1,fast1080p=2"])
def test_bad_mix_is_a_user_error(bad):
    with pytest.raises(UsageError):
        parse_mix(bad)


def test_capacity_from_ratio():
    assert capacity_for(1.0, 2) == 2
    assert capacity_for(1.5, 2) == 3
    assert capacity_for(1.25, 4) == 5
    for ratio, cores in ((0.4, 2), (0.1, 2), (0.01, 64)):  # a worker with capacity 0 could never run a task
        with pytest.raises(UsageError, match="capacity would be 0"):
            capacity_for(ratio, cores)
    assert capacity_for(1.0, 2, units=7) == 7
    with pytest.raises(UsageError):
        capacity_for(0, 2)
