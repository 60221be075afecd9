"""Placement policy, pure: strict FIFO head -> first-fit or weigher over feasible nodes.

This module is the reference the Lua placement script (``lua.py``) mirrors; tests compare the two
on random states. It is also what ``status`` uses to explain why the head task waits.

Feasible node: alive (heartbeat present), ``cap >= cpu_units`` and, when the node registered slot
tokens (``parallel > 0``), at least one free token.

Weighers (``--weigher``) and their normalisation: the raw metric is divided by the node's ``cap_total`` so
nodes of different sizes compare fairly. ``--weigher-order min`` prefers the smallest value, ``max`` the
largest. Ties (equal fractions, compared exactly by cross-multiplication, never as floats) go to the first
node in ``node_id`` order. Without a weigher the first feasible node in ``node_id`` order wins (first-fit).

A weigher is one entry of :data:`WEIGHER_TABLE`: its raw metric as a Python function and the same metric
as a Lua expression, side by side, both over ``cap``, ``cap_total`` and ``run_count``. The Lua placement
script, the ``--weigher`` choices and help texts are all generated from that table; the parity tests
(tests/test_control_lua.py) check that the two columns agree on random states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ORDERS = ("min", "max")


@dataclass(frozen=True)
class Weigher:
    """One weigher: its raw metric (the numerator; placement divides by ``cap_total``) in Python and in Lua.

    ``metric(cap, cap_total, run_count)`` and the Lua expression ``lua`` over the same three names must
    compute the same integer; ``help`` is the formula shown by ``--help``.
    """

    metric: Callable[[int, int, int], int]
    lua: str
    help: str


# Every weigher, in --weigher choice order: the one place a weigher is defined.
WEIGHER_TABLE: dict[str, Weigher] = {
    # tasks placed or running per capacity unit
    "instances": Weigher(lambda cap, cap_total, run_count: run_count, "run_count",
                         "run_count/cap_total"),
    # fraction of the node's capacity in use
    "vcpu": Weigher(lambda cap, cap_total, run_count: cap_total - cap, "cap_total - cap",
                    "(cap_total-cap)/cap_total"),
}
# The --weigher choices: '' (first-fit, no weigher) then the table's names.
WEIGHERS = ("", *WEIGHER_TABLE)


@dataclass(frozen=True)
class NodeState:
    """What placement needs to know about one registered node."""

    node: str
    alive: bool
    cap: int
    cap_total: int
    run_count: int
    parallel: int = 0  # > 0: slots mode for this node
    free_slots: int = 0


@dataclass(frozen=True)
class Decision:
    """The chosen node (or None), the candidates considered, and why nothing fits when nothing does.

    ``feasible``: how many nodes could take the task; ``runner_up``: the node that would have been chosen
    without the chosen one (the placement log's explanation of a decision)."""

    node: str | None
    candidates: list
    reason: str = ""
    feasible: int = 0
    runner_up: str | None = None


def metric(node: NodeState, weigher: str) -> int:
    """The raw weigher metric of a node (numerator of its normalised value); 0 without a weigher."""
    entry = WEIGHER_TABLE.get(weigher)
    return entry.metric(node.cap, node.cap_total, node.run_count) if entry else 0


def value(node: NodeState, weigher: str) -> float:
    """The normalised weigher value logged for a candidate (metric / cap_total)."""
    return round(metric(node, weigher) / node.cap_total, 6) if node.cap_total > 0 else 0.0


def feasible(node: NodeState, cpu_units: int) -> bool:
    """Alive, enough free capacity and, in slots mode, a free slot token."""
    return node.alive and node.cap >= cpu_units and (node.parallel <= 0 or node.free_slots > 0)


def _better(a: NodeState, b: NodeState, weigher: str, order: str) -> bool:
    """True when ``a`` is strictly preferred over ``b`` (exact fraction comparison)."""
    lhs = metric(a, weigher) * b.cap_total
    rhs = metric(b, weigher) * a.cap_total
    return lhs < rhs if order == "min" else lhs > rhs


def why_blocked(nodes: list[NodeState], cpu_units: int) -> str:
    """A one-line explanation of why no node can take a task of ``cpu_units``."""
    alive = [n for n in nodes if n.alive]
    if not nodes:
        return "no worker registered"
    if not alive:
        return f"no alive worker ({len(nodes)} registered, heartbeats expired)"
    if not any(n.cap_total >= cpu_units for n in alive):
        biggest = max(alive, key=lambda n: n.cap_total)
        return f"needs {cpu_units} units but the largest alive node {biggest.node} has cap_total {biggest.cap_total}"
    fits_cap = [n for n in alive if n.cap >= cpu_units]
    if not fits_cap:
        best = max(alive, key=lambda n: n.cap)
        return f"head-of-line blocking: needs {cpu_units} units, most free is {best.cap} on {best.node}"
    return f"head-of-line blocking: needs {cpu_units} units; nodes with capacity have no free slot token"


def choose(nodes: list[NodeState], cpu_units: int, weigher: str = "", order: str = "min") -> Decision:
    """Place one task of ``cpu_units``: first-fit in ``node_id`` order, or the best by the weigher.

    ``nodes`` may come in any order; they are considered sorted by ``node_id``. With no weigher the
    candidates are the nodes scanned up to the first feasible one (only that one is feasible).
    """
    if weigher not in WEIGHERS or order not in ORDERS:
        raise ValueError(f"weigher must be one of {WEIGHERS}, order one of {ORDERS}")
    ordered = sorted(nodes, key=lambda n: n.node)
    feas = [n for n in ordered if feasible(n, cpu_units)]

    def pick(among: list[NodeState]) -> NodeState | None:
        best: NodeState | None = None
        for n in among:
            if not weigher:
                return n
            if best is None or _better(n, best, weigher, order):
                best = n
        return best

    best = pick(feas)
    cands = feas if weigher else feas[:1]
    out = [{"node": n.node, "cap": n.cap, "cap_total": n.cap_total, "run_count": n.run_count,
            "value": value(n, weigher)} for n in cands]
    if best is None:
        return Decision(None, out, why_blocked(ordered, cpu_units))
    second = pick([n for n in feas if n is not best])
    return Decision(best.node, out, feasible=len(feas), runner_up=second.node if second else None)


def apply(nodes: list[NodeState], chosen: str, cpu_units: int) -> list[NodeState]:
    """The node states after placing ``cpu_units`` on ``chosen`` (for simulating a sequence)."""
    out = []
    for n in nodes:
        if n.node == chosen:
            n = NodeState(n.node, n.alive, n.cap - cpu_units, n.cap_total, n.run_count + 1, n.parallel,
                          n.free_slots - (1 if n.parallel > 0 else 0))
        out.append(n)
    return out
