"""The load generator's pure logic (docs/services.md, "Load generator"): request mix, arrival schedule, bounds.

No I/O here: :mod:`tracekit.control.loadgen` sends what these functions plan.

- Open loop: requests arrive on a schedule of their own, whatever the service does: ``constant`` (every
  ``1/rate`` s) or ``poisson`` (exponential gaps of mean ``1/rate``, from a seeded generator: the same seed gives
  the same schedule).
- Closed loop: ``concurrency`` clients, each sends its next request when the previous one ended.
- Either way the run is bounded by a request count and/or a duration (at least one; both capped).
- The mix: weighted entries ``{method, path, body, weight}``; request ``n`` uses entry ``choose_mix(...)[n]``,
  drawn from its own seeded generator. Paths are relative (``/...``): a mix can never aim at another host.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

from tracekit.core.errors import BadInput, UsageError

MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600.0
MAX_RATE = 100_000.0
MAX_CONCURRENCY = 4096
MAX_BODY_BYTES = 1 << 20
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ARRIVALS = ("constant", "poisson")


@dataclass(frozen=True)
class MixEntry:
    """One kind of request: method, relative path (with its query), body bytes, relative weight."""

    method: str
    path: str
    body: bytes = b""
    weight: float = 1.0


def check_path(path: object, where: str = "path") -> str:
    """A request path relative to the service: starts with one ``/``, no scheme, host, control character or
    whitespace (so it can only reach the service it is sent to)."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//") or len(path) > 8192:
        raise BadInput(f"{where} must be a path starting with a single '/' (the service's own address is "
                       f"prepended), got {path!r}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        raise BadInput(f"{where} has whitespace or a control character: {path!r}")
    return path


def parse_mix(text: str) -> list[MixEntry]:
    """A mix file: JSON Lines (or one JSON list) of ``{"method": "GET", "path": "/thumb?t=1", "body": "...",
    "weight": 1}``; ``method`` defaults to GET, ``body`` to none, ``weight`` to 1. :class:`BadInput` if wrong."""
    text = text.strip()
    if not text:
        raise BadInput("the request mix is empty")
    try:
        items = json.loads(text) if text.startswith("[") else [json.loads(ln) for ln in text.splitlines()
                                                               if ln.strip() and not ln.lstrip().startswith("#")]
    except json.JSONDecodeError as exc:
        raise BadInput(f"request mix: not JSON: {exc.msg} (line {exc.lineno})") from None
    out = []
    for k, it in enumerate(items, 1):
        where = f"request mix entry {k}"
        if not isinstance(it, dict) or set(it) - {"method", "path", "body", "weight"}:
            raise BadInput(f"{where}: expected an object with method, path, body, weight")
        method = str(it.get("method", "GET")).upper()
        if method not in METHODS:
            raise BadInput(f"{where}: method must be one of {', '.join(METHODS)}")
        body = it.get("body")
        if body is not None and not isinstance(body, str):
            raise BadInput(f"{where}: body must be a string")
        raw = (body or "").encode()
        if len(raw) > MAX_BODY_BYTES:
            raise BadInput(f"{where}: body over {MAX_BODY_BYTES} bytes")
        w = it.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
            raise BadInput(f"{where}: weight must be a positive number")
        out.append(MixEntry(method, check_path(it.get("path"), f"{where}: path"), raw, float(w)))
    return out


def check_bounds(count: int | None, duration_s: float | None) -> None:
    """At least one bound, each within its cap (the generator is bounded in count and time)."""
    if count is None and duration_s is None:
        raise UsageError("give --count and/or --duration: the load is always bounded")
    if count is not None and not 1 <= count <= MAX_REQUESTS:
        raise UsageError(f"--count must be 1..{MAX_REQUESTS}")
    if duration_s is not None and not (0 < duration_s <= MAX_DURATION_S):
        raise UsageError(f"--duration must be in (0, {MAX_DURATION_S:g}] s")


def arrival_offsets(rate: float, duration_s: float | None, count: int | None, arrival: str = "constant",
                    seed: int = 0) -> list[float]:
    """Open loop: send times in seconds from the start, ascending, all ``< duration_s`` and at most ``count``
    (constant: ``k / rate``; poisson: cumulative exponential gaps, seeded)."""
    check_bounds(count, duration_s)
    if not (0 < rate <= MAX_RATE):
        raise UsageError(f"--rate must be in (0, {MAX_RATE:g}] requests/s")
    if arrival not in ARRIVALS:
        raise UsageError(f"--arrival must be one of {', '.join(ARRIVALS)}")
    limit = count if count is not None else MAX_REQUESTS
    end = duration_s if duration_s is not None else math.inf
    out: list[float] = []
    if arrival == "constant":
        n = limit if duration_s is None else min(limit, math.ceil(duration_s * rate - 1e-9))
        return [k / rate for k in range(n)]
    rng = random.Random(seed)
    t = 0.0
    while len(out) < limit:
        if t >= end:
            break
        out.append(t)
        t += rng.expovariate(rate)
    return out


class MixPicker:
    """The mix entry of request ``n`` (``picker[n]``): weighted draws from a generator seeded apart from the
    arrivals, drawn in chunks as far as needed (the same sequence whatever the chunks, so every process of a split
    run agrees)."""

    def __init__(self, weights: list[float], seed: int = 0) -> None:
        if not weights:
            raise BadInput("the request mix is empty")
        self.weights = list(weights)
        self.rng = random.Random(f"mix:{seed}")
        self.drawn: list[int] = []

    def __getitem__(self, n: int) -> int:
        if len(self.weights) == 1:
            return 0
        while len(self.drawn) <= n:
            self.drawn += self.rng.choices(range(len(self.weights)), weights=self.weights, k=1024)
        return self.drawn[n]


def choose_mix(weights: list[float], n: int, seed: int = 0) -> list[int]:
    """The mix entries of requests 0..n-1 (see :class:`MixPicker`)."""
    picker = MixPicker(weights, seed)
    return [picker[k] for k in range(n)]


def closed_loop_next(sent: int, elapsed_s: float, count: int | None, duration_s: float | None) -> bool:
    """Closed loop: may a client send request number ``sent`` (0-based) now, ``elapsed_s`` after the start?"""
    if count is not None and sent >= count:
        return False
    return duration_s is None or elapsed_s < duration_s


def percentile(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
