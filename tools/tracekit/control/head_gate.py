"""The payload gate for the head of ``q:pending``, run in the scheduler's process rather than in Redis.

Redis runs every step of every task on its one thread, so its CPU is what limits placements/s; the gate was the
largest part of a placement there (~10 µs of ~30). The scheduler reads the head, checks it with
:func:`tracekit.control.payload.check` (the Lua gate's rules, proven to give the same verdicts) and sends the
accepted entries with its PLACE call; Lua compares each with the entry now at its position and gates only those
that differ or were not sent, so a payload pushed to the head meanwhile is still checked. Verdicts are cached
per payload text: a head that waits for capacity over many rounds is checked once.
"""

from __future__ import annotations

import redis
from redis.client import NEVER_DECODE

from tracekit.control import payload

Fields = tuple[bytes, bytes, bytes]  # trace_id, attempt, cpu_units: as PLACE reads them


class HeadGate:
    """Checks head entries once each and turns them into PLACE's trailing arguments."""

    def __init__(self, cache_size: int = 4096) -> None:
        self.cache: dict[bytes, Fields | None] = {}
        self.cache_size = cache_size

    def fields(self, raw: bytes) -> Fields | None:
        """(trace_id, attempt, cpu_units) of a payload PLACE may take without its own gate; None when the Lua
        gate must see it (refused, or without cpu_units: PLACE records why)."""
        try:
            return self.cache[raw]
        except KeyError:
            pass
        try:
            env = payload.check(raw)
        except payload.InvalidPayload:
            found = None
        else:
            found = None if env.cpu_units is None else (
                env.trace_id.encode(), b"%d" % env.attempt, b"%d" % env.cpu_units)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[raw] = found
        return found

    def place_args(self, raws: list[bytes]) -> list[bytes]:
        """PLACE's trailing arguments for the head entries ``raws`` (queue order), up to the first entry the Lua
        gate must see."""
        out: list[bytes] = []
        for raw in raws:
            found = self.fields(raw)
            if found is None:
                break
            out += (raw, *found)
        return out

    def warm(self, raws: list[bytes]) -> None:
        """Check entries ahead of time (the next round's head, while Redis places this round's)."""
        for raw in raws:
            self.fields(raw)


def read_head(client: redis.Redis | redis.client.Pipeline, key: str, count: int) -> list[bytes]:
    """The first ``count`` entries of a queue as bytes (a payload that is not UTF-8 must reach the gate as is); on
    a pipeline, the reply comes with its others."""
    return client.execute_command("LRANGE", key, 0, count - 1, **{NEVER_DECODE: True}) or []
