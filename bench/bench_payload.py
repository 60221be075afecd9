#!/usr/bin/env python3
"""The payload gate's cost: µs per ``payload.check`` of a few typical payloads vs the previous implementation.

The central scheduler checks the head of ``q:pending`` in Python, once per placed task (up to 20,000 tasks/s at
1,000 nodes), so ``tracekit.control.payload.check`` is a hot path. The baseline, run in the same invocation on
the same payloads, is the implementation before its fast paths, kept here verbatim as :func:`reference_check`
(every rule checked in full: control regex, depth scan, ``json.loads`` with the ``parse_int`` callback, the
recursive ``_scan`` walk, ``_fields``). ``tests/test_payload_fastpaths.py`` also uses it as the oracle: both must
give the same verdict (rule, trace_id, attempt, profile, reason) on every input. A ``json.loads`` row shows the
floor (parsing alone). Target: <= 7 µs for the usual payload (integer or float ``ts_enqueue``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import timeit

from benchlib import print_table
from tracekit.control import payload
from tracekit.control.payload import (
    ATTEMPTS,
    CPU_UNITS,
    MAX_DEPTH,
    MAX_ID_LEN,
    MAX_PATH_BYTES,
    MAX_PAYLOAD_BYTES,
    TS_MS,
    Envelope,
    InvalidPayload,
    as_bytes,
    binding_problem,
    depth_of,
    safe_id,
    trace_hint,
)

USUAL = ('{"attempt":1,"cpu_units":1,"input":"/data/in/clip.mp4","output":"/data/out/x.mp4","params":{},'
         '"profile":"fast1080p","trace_id":"b0000123","ts_enqueue":%s}')
PAYLOADS = {
    "usual, integer ts_enqueue": (USUAL % "1764259200123").encode(),
    "usual, float ts_enqueue": (USUAL % "1764259200123.456").encode(),
    "dispatcher's json.dumps, params": json.dumps({
        "trace_id": "t-000042", "profile": "x264-medium", "cpu_units": 2, "attempt": 1, "ts_enqueue": 1764259200123,
        "ts_dispatch": 1764259200456.5, "node": "node00017", "input": "/data/in/clip-0042.mp4",
        "output": "/data/out/clip-0042.mp4", "params": {"crf": 23, "preset": "medium", "codec": "libx264"}}).encode(),
    "refused: cpu_units 0": (USUAL % "1764259200123").replace('"cpu_units":1', '"cpu_units":0').encode(),
}


# ---- the reference: payload.check as it was before its fast paths (verbatim; private helpers copied) ----

_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_int(s: str) -> int | float:
    f = float(s)  # a 400-digit integer is inf as a double (the Lua side reads every number as a double)
    return int(s) if math.isfinite(f) else f


def _scan(v: object, path: str, found: dict) -> None:
    if isinstance(v, float):
        if not math.isfinite(v) and "number" not in found:
            found["number"] = path
    elif isinstance(v, str):
        if _SURROGATE.search(v):
            found["surrogate"] = path
    elif isinstance(v, dict):
        for k, x in v.items():
            if _SURROGATE.search(k):
                found["surrogate"] = path
            _scan(x, f"{path}.{k}" if path else k, found)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _scan(x, f"{path}[{i}]", found)


def _is_int(v: object, lo: int, hi: int) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and float(v).is_integer()
            and lo <= v <= hi)


def _is_num(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _absent(d: dict, key: str) -> bool:
    return d.get(key) is None


def _path_ok(v: object) -> bool:
    if not isinstance(v, str):
        return False
    n = len(v.encode("utf-8", "surrogatepass"))
    return 0 < n <= MAX_PATH_BYTES and "\x00" not in v


def _fields(d: dict) -> tuple[str, str] | None:
    tid = d.get("trace_id")
    if not safe_id(tid):
        return "trace_id", f"trace_id missing or unsafe (letters, digits, '_', '.', '-'; at most {MAX_ID_LEN}): {tid!r}"
    if not safe_id(d.get("profile")):
        return "profile", f"profile missing or not a profile name: {d.get('profile')!r}"
    if not _absent(d, "cpu_units") and not _is_int(d["cpu_units"], *CPU_UNITS):
        lo, hi = CPU_UNITS
        return "cpu_units", f"cpu_units must be an integer in {lo}..{hi}, got {d.get('cpu_units')!r}"
    if not _absent(d, "attempt") and not _is_int(d["attempt"], *ATTEMPTS):
        return "attempt", f"attempt must be an integer in {ATTEMPTS[0]}..{ATTEMPTS[1]}, got {d['attempt']!r}"
    if not _is_num(d.get("ts_enqueue"), *TS_MS):
        return "ts_enqueue", f"ts_enqueue must be epoch milliseconds (0..{TS_MS[1]}), got {d.get('ts_enqueue')!r}"
    if not _absent(d, "ts_dispatch") and not _is_num(d["ts_dispatch"], *TS_MS):
        return "ts_dispatch", f"ts_dispatch must be epoch milliseconds (0..{TS_MS[1]}), got {d['ts_dispatch']!r}"
    if not _absent(d, "node") and not isinstance(d["node"], str):
        return "node", f"node must be a string, got {d['node']!r}"
    for key in ("input", "output"):
        if not _absent(d, key) and not _path_ok(d[key]):
            return key, f"{key} must be a non-empty path string (at most {MAX_PATH_BYTES} bytes, no NUL)"
    p = d.get("params")
    if not _absent(d, "params") and not (isinstance(p, dict) or p == []):
        return "params", "params must be an object"
    why = binding_problem(d)
    if why:
        return "binding", why
    return None


def reference_check(raw: str | bytes) -> Envelope:
    """``payload.check`` before its fast paths: every rule in full, in order."""
    b = as_bytes(raw)
    if len(b) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {len(b)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit", "size",
                             trace_hint(b))
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"payload is not valid UTF-8 (byte {exc.start})", "utf8", trace_hint(b)) from None
    m = _CONTROL.search(b)
    if m:
        raise InvalidPayload(f"payload holds a control character (0x{m.group()[0]:02x} at byte {m.start()})",
                             "control", trace_hint(b))
    if depth_of(b) > MAX_DEPTH:
        raise InvalidPayload(f"payload nests deeper than {MAX_DEPTH} levels", "depth", trace_hint(b))
    try:
        d = json.loads(text, strict=False, parse_int=_parse_int)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise InvalidPayload(f"payload is not valid JSON: {exc}", "json", trace_hint(b)) from None
    found: dict = {}
    _scan(d, "", found)
    if "surrogate" in found:
        raise InvalidPayload("payload is not valid JSON: lone surrogate \\u escape", "json", trace_hint(b))
    if not isinstance(d, dict):
        raise InvalidPayload("payload must be a JSON object", "object")
    tid = d.get("trace_id") if safe_id(d.get("trace_id")) else None
    attempt = int(d["attempt"]) if _is_int(d.get("attempt"), *ATTEMPTS) else 1
    profile = d.get("profile") if safe_id(d.get("profile")) else None
    if "number" in found:
        raise InvalidPayload(f"payload holds a number that is not finite (NaN, Infinity or beyond a double, "
                             f"e.g. 1e400) at {found['number'] or 'top level'}", "number", tid, attempt, profile)
    bad = _fields(d)
    if bad:
        raise InvalidPayload(bad[1], bad[0], tid, attempt, profile)
    units = None if _absent(d, "cpu_units") else int(d["cpu_units"])
    return Envelope(d, tid, profile, units, attempt)


def outcome(check, raw: str | bytes) -> tuple:
    """Everything a check says about one payload: the Envelope's fields (their types too), or the refusal's rule,
    trace_id, attempt, profile and reason."""
    try:
        env = check(raw)
    except InvalidPayload as exc:
        return ("refused", exc.rule, exc.trace_id, exc.attempt, exc.profile, str(exc))
    return ("passed", env.trace_id, env.profile, env.cpu_units, type(env.cpu_units), env.attempt, type(env.attempt),
            json.dumps(env.data, sort_keys=True, allow_nan=True), repr(env.data))


# ---- the benchmark ----


def _us_per_call(fn, arg, number: int, repeat: int) -> float:
    """The best of ``repeat`` runs of ``number`` calls, in µs per call (the best: least disturbed by the other
    work on this 2-core machine)."""
    def loop():
        for _ in range(number):
            try:
                fn(arg)
            except InvalidPayload:  # the refused payload's row: the cost of raising counts
                continue
    return min(timeit.repeat(loop, number=1, repeat=repeat)) / number * 1e6


def run(quick: bool = True) -> list[dict]:
    """Rows for bench/run_all.py: µs per check, ours vs the reference (ratio = ours / reference)."""
    number, repeat = (20_000, 5) if quick else (100_000, 9)
    rows = []
    for name, raw in PAYLOADS.items():
        if outcome(payload.check, raw) != outcome(reference_check, raw):  # a fast wrong answer is no result
            raise RuntimeError(f"payload.check and the reference disagree on {name!r}")
        ours = _us_per_call(payload.check, raw, number, repeat)
        base = _us_per_call(reference_check, raw, number, repeat)
        target = "ours <= 7 us" if name.startswith("usual") else "report"
        rows.append({"bench": "payload", "metric": f"us/check, {name} ({len(raw)} B)", "ours": ours,
                     "baseline": base, "ratio": ours / base, "target": target})
    raw = PAYLOADS["usual, integer ts_enqueue"]
    loads = _us_per_call(json.loads, raw, number, repeat)
    ours = _us_per_call(payload.check, raw, number, repeat)
    rows.append({"bench": "payload", "metric": "us/call, usual payload: check vs json.loads alone", "ours": ours,
                 "baseline": loads, "ratio": ours / loads, "target": "report (json.loads: the floor)"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="more calls per run and more runs")
    args = ap.parse_args()
    print_table(run(quick=not args.full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
