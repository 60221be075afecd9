"""Clocks: wall time in epoch milliseconds, monotonic durations, and the offset to the controller.

The controller's time base is the Redis server's ``TIME``. A node measures
``offset_ms = redis_time - local_wall`` with the round trip of the best of a few probes; the parser
adds the offset to node timestamps. Nothing here steps the system clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


def wall_ms() -> float:
    """Wall-clock time, epoch milliseconds (float, µs resolution)."""
    return time.time_ns() / 1e6


def mono_ms() -> float:
    """Monotonic time in milliseconds, for durations and sampling deadlines."""
    return time.monotonic_ns() / 1e6


@dataclass(frozen=True)
class ClockOffset:
    """``offset_ms`` to add to this host's wall clock to get the controller's; ``rtt_ms`` of the probe."""

    offset_ms: float
    rtt_ms: float
    measured_at_ms: float

    def as_dict(self) -> dict:
        return {
            "offset_ms": round(self.offset_ms, 3),
            "rtt_ms": round(self.rtt_ms, 3),
            "measured_at_ms": round(self.measured_at_ms, 3),
        }


def redis_clock_offset(client, probes: int = 5) -> ClockOffset:
    """Measure the offset to the Redis server clock, keeping the probe with the smallest round trip."""
    best: ClockOffset | None = None
    for _ in range(max(1, probes)):
        t0 = wall_ms()
        m0 = time.monotonic_ns()
        sec, usec = client.time()
        rtt = (time.monotonic_ns() - m0) / 1e6
        server_ms = int(sec) * 1000 + int(usec) / 1000
        offset = server_ms - (t0 + rtt / 2)
        if best is None or rtt < best.rtt_ms:
            best = ClockOffset(offset, rtt, t0)
    assert best is not None
    return best
