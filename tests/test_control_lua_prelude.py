"""Each Lua step carries only the prelude definitions it uses (pure: the script texts, no Redis)."""

from __future__ import annotations

import re

import pytest

from tracekit.control import lua
from tracekit.core.keys import Keys

PRE = lua.prelude(Keys("lp:"), lua.weigher_lua())
STEPS = {"place": lua.PLACE, "reindex": lua.REINDEX, "register": lua.REGISTER, "beat": lua.BEAT,
         "complete": lua.COMPLETE, "reap": lua.REAP, "leave": lua.LEAVE, "drain": lua.DRAIN, "gate": lua.GATE_CHECK}
DEFINED = set().union(*(names for names, _ in lua.chunks(PRE)))


def defined_in(text: str) -> set[str]:
    return set().union(*(names for names, _ in lua.chunks(text)))


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_prelude_name_a_script_uses_is_defined_in_it(step):
    body = lua.script_body(PRE, STEPS[step])
    head = body[:len(body) - len(STEPS[step])]
    missing = (lua.refs(body) & DEFINED) - defined_in(head)
    assert not missing, missing


def test_the_prelude_splits_into_every_definition():
    """Every top-level 'local' of the prelude (function or value) and every K.<key> is a definition of its own."""
    tops = set(re.findall(r"^local function (\w+)", PRE, re.M)) | set(re.findall(r"^(K\.\w+) =", PRE, re.M))
    for line in re.findall(r"^local ([\w, ]+?) =", PRE, re.M):
        tops |= {n.strip() for n in line.split(",")}
    assert tops == DEFINED


def test_a_step_leaves_out_what_it_does_not_use():
    complete = lua.script_body(PRE, lua.COMPLETE)
    assert "local function gate(" not in complete and "local function utf8_ok(" not in complete
    assert "local function idx_put(" in complete and "K.idx_w = " in complete
    assert "local function gate(" in lua.script_body(PRE, lua.PLACE)
    beat = lua.script_body(PRE, lua.BEAT)
    assert len(beat) < len(PRE) / 3 and "K.heartbeat = " in beat and "K.done = " not in beat
