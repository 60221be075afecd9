"""The payload gate: the one set of rules every task payload passes before anything acts on it.

The dispatcher checks each payload before it pushes it, the central scheduler's Lua checks the head of
``q:pending`` before it places (or pops) it, and the worker checks what it took before it parses the task. The
rules and their limits live here, as constants; the Lua side (``lua.GATE``) is rendered from the same constants
(:func:`lua_constants`), and ``tests/test_control_payload.py`` proves both sides give the same verdict (rule and
trace_id) on a corpus of bad payloads, hand-written and generated.

Rules, in the order they are checked (the first that fails names the ``rule``):

    size      at most MAX_PAYLOAD_BYTES bytes, checked before anything is decoded or parsed
    utf8      well-formed UTF-8 (no overlong forms, no surrogates)
    control   no control character other than tab, LF, CR (raw; escaped ``\\u0001`` in a string is fine)
    depth     arrays/objects nest at most MAX_DEPTH levels, counted on the raw text (strings skipped) before
              parsing, so no parser ever recurses deeply
    json      standard JSON (``NaN``/``Infinity``/``-Infinity`` are read, then refused by ``number``); no lone
              surrogate escape; nothing after the value
    object    the top level is a JSON object
    number    every number anywhere is finite as an IEEE double: no NaN, Infinity, 1e400, 400-digit integers
    trace_id, profile, cpu_units, attempt, ts_enqueue, ts_dispatch, node, input, output, params, binding
              the fields' types and ranges (``_fields``). ``binding`` covers the original Tracekit's per-task CPU
              controls, each optional: ``cpuset`` a CPU list string ("0-1", "2,3"; ranges ascending),
              ``cpu_quota`` an integer percent of one CPU in 1..CPU_QUOTA_MAX, ``cpu_weight`` an integer in
              1..10000 (systemd CPUWeight), ``unit_name`` a systemd unit name (letters, digits, ':', '_', '.', '-').
              Whether a cpuset fits the node (its cores, the running tasks' cpusets) only the worker knows.
              ``cpu_units`` may be absent: the profile's, known only
              to workers (the scheduler fails such a payload instead of placing it). An integer is any number
              with an integral value (``2`` and ``2.0`` alike: Lua cannot tell them apart). Absent and ``null``
              optional fields are the same. ``params`` is an object (an empty array counts as an empty object:
              cjson cannot tell them apart). Other fields are kept and only pass the rules above.

A failure names the payload's own ``trace_id`` whenever it can be read: from the parsed object when the rule is
``number`` or a field rule and its ``trace_id`` is valid, else from the raw text when it holds exactly one
``"trace_id": "<safe id>"`` member (:func:`trace_hint`). When none can be read, the record goes under
``bad-<first 12 hex digits of the payload's SHA-1>`` (:func:`bad_key`), as every Lua step and the worker name it.
What profiles exist, parameter values and paths are the worker's own rules (``task.parse_task``): the scheduler
does not know the workers' profiles.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from tracekit.core.errors import BadTask

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_ID_LEN = 128  # paths.SAFE_ID: a letter or digit, then letters, digits, '_', '.', '-'
MAX_PATH_BYTES = 4096
CPU_UNITS = (1, 1024)
ATTEMPTS = (1, 10_000)
# epoch ms; at most 14 digits because cjson re-encodes numbers with 14 significant digits
TS_MS = (0, 10**14 - 1)
RULES = ("size", "utf8", "control", "depth", "json", "object", "number", "trace_id", "profile", "cpu_units",
         "attempt", "ts_enqueue", "ts_dispatch", "node", "input", "output", "params", "binding")
CPUSET_MAX_CHARS = 256
CPU_QUOTA_MAX = 102_400  # % of one CPU: 1024 CPUs
CPU_WEIGHT = (1, 10_000)  # systemd CPUWeight range
_CPUSET_PART = re.compile(r"([0-9]{1,4})(?:-([0-9]{1,4}))?\Z")
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.-]*\Z")

_ID_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_HINT = re.compile(rb'"trace_id"[ \t\n\r]*:[ \t\n\r]*"([A-Za-z0-9][A-Za-z0-9_.-]*)"')
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidPayload(BadTask):
    """A payload the gate refuses: ``rule`` names the rule, ``trace_id`` the payload's own id when it can be read
    (None otherwise), ``attempt``/``profile`` what could be read safely (for the record)."""

    def __init__(self, message: str, rule: str, trace_id: str | None = None, attempt: int = 1,
                 profile: str | None = None) -> None:
        super().__init__(message, trace_id=trace_id)
        self.rule = rule
        self.attempt = attempt
        self.profile = profile


@dataclass(frozen=True)
class Envelope:
    """A payload that passed the gate: the parsed object and its checked fields."""

    data: dict
    trace_id: str
    profile: str
    cpu_units: int | None  # None: absent, the profile's (only a worker knows it; the scheduler refuses to place it)
    attempt: int


def as_bytes(raw: str | bytes) -> bytes:
    """The payload's bytes (a ``str`` holding lone surrogates keeps them, so the ``utf8`` rule refuses it)."""
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


def safe_id(v: object) -> bool:
    """``v`` is a string matching ``paths.SAFE_ID`` (exactly: no trailing newline)."""
    return isinstance(v, str) and len(v) <= MAX_ID_LEN and _ID_STR.match(v) is not None


def bad_key(raw: str | bytes) -> str:
    """The record key of a payload whose trace_id cannot be read: ``bad-<sha1[:12]>`` of its bytes."""
    return "bad-" + hashlib.sha1(as_bytes(raw)).hexdigest()[:12]


def trace_hint(raw: str | bytes) -> str | None:
    """The trace_id read from the raw text without parsing it: only when ``"trace_id"`` occurs exactly once and
    is followed by ``: "<safe id>"``."""
    b = as_bytes(raw)
    i = b.find(b'"trace_id"')
    if i < 0 or b.find(b'"trace_id"', i + 1) >= 0:
        return None
    m = _HINT.match(b, i)
    if m is None or len(m.group(1)) > MAX_ID_LEN:
        return None
    return m.group(1).decode("ascii")


def depth_of(b: bytes) -> int:
    """The deepest nesting of arrays/objects, counted on the raw bytes with escapes and strings removed."""
    s = _STRING.sub(b"0", _ESCAPE.sub(b"", b) if b"\\" in b else b)
    d = deepest = 0
    for c in _NOT_BRACKET.sub(b"", s):
        if c in b"[{":
            d += 1
            deepest = max(deepest, d)
        else:
            d -= 1
    return deepest


def _parse_int(s: str) -> int | float:
    f = float(s)  # a 400-digit integer is inf as a double (the Lua side reads every number as a double)
    return int(s) if math.isfinite(f) else f


# The decoders, built once (json.loads builds one per call). An integer literal of at most 308 digits is always
# finite as a double, so without a run of 309 digits the parse_int callback returns what int() does: skipped.
_DECODER = json.JSONDecoder(strict=False)
_DECODER_INT = json.JSONDecoder(strict=False, parse_int=_parse_int)
_LONG_DIGITS = re.compile(rb"(?<![0-9])[0-9]{309}")  # the lookbehind: one try per run of digits, not per digit
_UESCAPE = re.compile(rb"\\u")


def _loads(text: str, b: bytes) -> object:
    """``json.loads(text, strict=False, parse_int=_parse_int)``, without the callback when no integer needs it."""
    if text.startswith("\ufeff"):  # json.loads refuses a BOM before its decoder runs: its own message
        return json.loads(text, strict=False, parse_int=_parse_int)
    return (_DECODER_INT if _LONG_DIGITS.search(b) else _DECODER).decode(text)


def _finite(v: object) -> bool:
    """Every number in a parsed value (depth already bounded) is finite (``x - x`` is NaN for NaN and inf)."""
    t = type(v)
    if t is float:
        return v - v == 0
    if t is dict:
        v = v.values()
    elif t is not list:
        return True
    for x in v:
        t = type(x)
        if t is float:
            if x - x != 0:
                return False
        elif (t is dict or t is list) and not _finite(x):
            return False
    return True


def _scan(v: object, path: str, found: dict) -> None:
    """Walk a parsed value (depth already bounded): the first non-finite number, any lone surrogate."""
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
    """The first field rule ``d`` breaks: (rule, reason), or None."""
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


def _usual(d: dict) -> bool:
    """The usual payload's fields, checked in one pass: True only when :func:`_fields` finds nothing (no reason
    built). False says nothing: the caller then asks :func:`_fields`."""
    get = d.get
    tid, prof = get("trace_id"), get("profile")
    if not (type(tid) is str and type(prof) is str and len(tid) <= MAX_ID_LEN and len(prof) <= MAX_ID_LEN
            and _ID_STR.match(tid) and _ID_STR.match(prof)):
        return False
    v = get("cpu_units")
    if v is not None and not (type(v) is int and CPU_UNITS[0] <= v <= CPU_UNITS[1]):
        return False
    v = get("attempt")
    if v is not None and not (type(v) is int and ATTEMPTS[0] <= v <= ATTEMPTS[1]):
        return False
    v = get("ts_enqueue")
    if not ((type(v) is int or type(v) is float) and TS_MS[0] <= v <= TS_MS[1]):
        return False
    v = get("ts_dispatch")
    if v is not None and not ((type(v) is int or type(v) is float) and TS_MS[0] <= v <= TS_MS[1]):
        return False
    v = get("node")
    if v is not None and type(v) is not str:
        return False
    for key in ("input", "output"):
        v = get(key)
        if v is not None and not _path_ok(v):
            return False
    v = get("params")
    if v is not None and type(v) is not dict and v != []:
        return False
    # any CPU control present: binding_problem's own checks
    return get("cpuset") is None and get("cpu_quota") is None and get("cpu_weight") is None \
        and get("unit_name") is None


def cpuset_ok(v: object) -> bool:
    """``v`` is a CPU list string: comma-separated numbers or ascending ranges (``0-1``, ``2,5-7``)."""
    if not isinstance(v, str) or not 0 < len(v) <= CPUSET_MAX_CHARS:
        return False
    for part in v.split(","):
        m = _CPUSET_PART.match(part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            return False
    return True


def binding_problem(d: dict) -> str | None:
    """Why the payload's own CPU controls (cpuset, cpu_quota, cpu_weight, unit_name) are malformed, or None."""
    if not _absent(d, "cpuset") and not cpuset_ok(d["cpuset"]):
        return f"cpuset must be a CPU list such as \"0-1\" or \"2,3\" (ranges ascending), got {d['cpuset']!r}"
    if not _absent(d, "cpu_quota") and not _is_int(d["cpu_quota"], 1, CPU_QUOTA_MAX):
        return f"cpu_quota must be an integer percent in 1..{CPU_QUOTA_MAX}, got {d['cpu_quota']!r}"
    if not _absent(d, "cpu_weight") and not _is_int(d["cpu_weight"], *CPU_WEIGHT):
        return f"cpu_weight must be an integer in {CPU_WEIGHT[0]}..{CPU_WEIGHT[1]}, got {d['cpu_weight']!r}"
    u = d.get("unit_name")
    if not _absent(d, "unit_name") and not (isinstance(u, str) and len(u) <= MAX_ID_LEN and _UNIT.match(u)):
        return f"unit_name must be a systemd unit name (letters, digits, ':', '_', '.', '-'), got {u!r}"
    return None


def check(raw: str | bytes) -> Envelope:
    """Apply every rule to one payload; the :class:`Envelope` or :class:`InvalidPayload`. Never raises anything
    else, whatever the input (no recursion, no decoding error, no overflow).

    The central scheduler runs this once per placed task, so the usual payload (printable, shallow, no ``\\u``
    escape, no huge integer, fields of the usual types) takes fast paths that skip work it cannot need; every
    other payload takes the full checks. Each fast path gives the verdict the full check would (same rule,
    trace_id, attempt, profile and reason): see "The payload gate's fast paths" in docs/internals.md."""
    b = as_bytes(raw)
    if len(b) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {len(b)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit", "size",
                             trace_hint(b))
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"payload is not valid UTF-8 (byte {exc.start})", "utf8", trace_hint(b)) from None
    # a control character is never printable: printable text (the usual payload) needs no scan
    if not text.isprintable():
        m = _CONTROL.search(b)
        if m:
            raise InvalidPayload(f"payload holds a control character (0x{m.group()[0]:02x} at byte {m.start()})",
                                 "control", trace_hint(b))
    # nesting deeper than MAX_DEPTH needs more opening brackets than that in the whole text (strings included)
    if b.count(b"[") + b.count(b"{") > MAX_DEPTH and depth_of(b) > MAX_DEPTH:
        raise InvalidPayload(f"payload nests deeper than {MAX_DEPTH} levels", "depth", trace_hint(b))
    try:
        d = _loads(text, b)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise InvalidPayload(f"payload is not valid JSON: {exc}", "json", trace_hint(b)) from None
    found: dict = {}
    # a lone surrogate comes only from a \u escape (strict UTF-8 decoding never yields one): without one in the
    # bytes, only the numbers need a look, and a cheap walk tells whether one is not finite
    if _UESCAPE.search(b) or not _finite(d):
        _scan(d, "", found)
    if "surrogate" in found:
        raise InvalidPayload("payload is not valid JSON: lone surrogate \\u escape", "json", trace_hint(b))
    if not isinstance(d, dict):
        raise InvalidPayload("payload must be a JSON object", "object")
    if not found and _usual(d):
        a = d.get("attempt")
        u = d.get("cpu_units")
        return Envelope(d, d["trace_id"], d["profile"], u, 1 if a is None else a)
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


def verdict(raw: str | bytes) -> tuple[str | None, str | None, str]:
    """(rule, trace_id, reason) of a payload; rule None when it passes (then trace_id is its id)."""
    try:
        env = check(raw)
    except InvalidPayload as exc:
        return exc.rule, exc.trace_id, str(exc)
    return None, env.trace_id, ""


def lua_constants() -> dict[str, int]:
    """The limits the Lua gate is rendered with (``lua.GATE``): the same numbers as the Python rules."""
    return {"MAX_BYTES": MAX_PAYLOAD_BYTES, "MAX_DEPTH": MAX_DEPTH, "MAX_ID": MAX_ID_LEN, "MAX_PATH": MAX_PATH_BYTES,
            "UNITS_LO": CPU_UNITS[0], "UNITS_HI": CPU_UNITS[1], "ATTEMPT_LO": ATTEMPTS[0],
            "ATTEMPT_HI": ATTEMPTS[1], "TS_LO": TS_MS[0], "TS_HI": TS_MS[1], "CPUSET_MAX": CPUSET_MAX_CHARS,
            "QUOTA_HI": CPU_QUOTA_MAX, "WEIGHT_LO": CPU_WEIGHT[0], "WEIGHT_HI": CPU_WEIGHT[1]}
