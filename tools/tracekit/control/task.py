"""The task payload: parse, validate, and turn into an exact argv. No shell, ever.

A payload is one JSON object; :mod:`tracekit.control.payload` (the gate shared with the dispatcher and the
scheduler's Lua) checks its size, encoding, nesting, numbers and field types first:
    trace_id    str, unique in the run (letters, digits, '_', '.', '-')
    profile     a known profile name
    cpu_units   int 1..1024 (default: the profile's; the central scheduler places only payloads that have it)
    ts_enqueue  int epoch ms, controller clock
    attempt     int >= 1
    input       path relative to the inputs root (or absolute inside it); absent for synthetic tasks
    output      path relative to the outputs root (or absolute inside it)
    params      optional overrides: scale, codec, preset, crf, threads, seconds
    ts_dispatch int epoch ms, set at placement; node: set at placement
Anything else is kept but ignored. A payload that fails validation raises :class:`InvalidTask`
with a one-line reason; the worker records it as a failed task and goes on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracekit.control import payload
from tracekit.control.payload import MAX_PAYLOAD_BYTES, InvalidPayload
from tracekit.control.profiles import CODECS, PRESETS, load_profiles
from tracekit.core.errors import BadTask

__all__ = ["MAX_PAYLOAD_BYTES", "InvalidTask", "Task", "parse_task", "build_command", "resolve_inside"]
SCALE_RE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".txt", ".out")
FFMPEG_BIN_ENV = "FFMPEG_BIN"


class InvalidTask(BadTask):
    """A payload that must not run; the message is the reason recorded for it (``trace_id`` once it is known;
    ``attempt`` and ``profile`` as far as they could be read)."""

    def __init__(self, message: str, trace_id: str | None = None, attempt: int = 1, profile: str | None = None) -> None:
        super().__init__(message, trace_id=trace_id)
        self.attempt = attempt
        self.profile = profile


@dataclass
class Task:
    """A validated task. ``params`` holds the effective ffmpeg/command parameters."""

    trace_id: str
    profile: str
    cpu_units: int
    ts_enqueue: int
    attempt: int = 1
    input: str | None = None
    output: str | None = None
    params: dict = field(default_factory=dict)
    ts_dispatch: int | None = None
    node: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The payload as stored in the queues (compact, stable key order)."""
        d = asdict(self)
        extra = d.pop("extra")
        d = {k: v for k, v in d.items() if v is not None}
        d.update({k: v for k, v in extra.items() if k not in d})
        return json.dumps(d, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _int(d: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidTask(f"{key} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _effective_params(prof: dict, given: dict) -> dict:
    """Profile defaults overridden by the payload's params, each checked against known values."""
    if not isinstance(given, dict):
        raise InvalidTask("params must be an object")
    unknown = set(given) - {"scale", "codec", "preset", "crf", "threads", "seconds"}
    if unknown:
        raise InvalidTask(f"unknown params: {', '.join(sorted(unknown))}")
    p = {k: prof[k] for k in ("threads", "scale", "codec", "preset", "crf", "seconds") if k in prof}
    p.update(given)
    # threads 0 = "no thread flags" exists only for the original's argument style (its direct-mode tasks)
    p["threads"] = _int(p, "threads", 0 if prof.get("args") == "original" else 1, 256)
    if "scale" in p and not (isinstance(p["scale"], str) and SCALE_RE.match(p["scale"])):
        raise InvalidTask(f"scale must look like 1920x1080, got {p['scale']!r}")
    if "codec" in p and p["codec"] not in CODECS:
        raise InvalidTask(f"codec must be one of {', '.join(CODECS)}, got {p['codec']!r}")
    if "preset" in p and p["preset"] not in PRESETS:
        raise InvalidTask(f"preset must be one of {', '.join(PRESETS)}, got {p['preset']!r}")
    if "crf" in p:
        p["crf"] = _int(p, "crf", 0, 51)
    if "seconds" in p:
        s = p["seconds"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 86400:
            raise InvalidTask(f"seconds must be a number in 0..86400, got {s!r}")
    return p


def parse_task(raw: str | bytes) -> Task:
    """Parse and validate a queue payload (everything but the file system); :class:`InvalidTask` if bad.

    The payload gate first (size before parsing, UTF-8, depth, finite numbers, field types and ranges), then what
    only a worker knows: the profile exists, its parameters, its input.
    """
    try:
        env = payload.check(raw)
    except InvalidPayload as exc:
        raise InvalidTask(str(exc), trace_id=exc.trace_id, attempt=exc.attempt, profile=exc.profile) from None
    d, tid = env.data, env.trace_id
    profiles = load_profiles()
    name = env.profile
    if name not in profiles:
        raise InvalidTask(f"unknown profile {name!r}", trace_id=tid, attempt=env.attempt)
    prof = profiles[name]
    ts = d["ts_enqueue"]
    if prof["needs_input"] and not d.get("input"):
        raise InvalidTask(f"profile {name} needs an input", trace_id=tid)
    known = {"trace_id", "profile", "cpu_units", "ts_enqueue", "attempt", "input", "output", "params",
             "ts_dispatch", "node"}
    ts_dispatch = d.get("ts_dispatch")
    try:
        params = _effective_params(prof, d.get("params") or {})
    except InvalidTask as exc:  # the reason is recorded under the payload's own trace_id
        raise InvalidTask(str(exc), trace_id=tid, attempt=env.attempt, profile=name) from None
    return Task(
        trace_id=tid,
        profile=name,
        cpu_units=env.cpu_units if env.cpu_units is not None else prof["cpu_units"],
        ts_enqueue=int(ts),
        attempt=env.attempt,
        input=d.get("input"),
        output=d.get("output"),
        params=params,
        ts_dispatch=int(ts_dispatch) if isinstance(ts_dispatch, (int, float)) else None,
        node=d.get("node") if isinstance(d.get("node"), str) else None,
        extra={k: v for k, v in d.items() if k not in known},
    )


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``rel`` resolved (symlinks too) and required to lie inside ``root``; :class:`InvalidTask` if not."""
    if any(part.startswith("-") for part in Path(rel).parts):
        raise InvalidTask(f"{what} path {rel!r} has a component starting with '-'")
    path = (root / rel).resolve()
    root = root.resolve()
    if path != root and root not in path.parents:
        raise InvalidTask(f"{what} path {rel!r} escapes the {what}s root {root}")
    return path


@dataclass(frozen=True)
class Command:
    """What to execute for a task: the argv, its files, and where output goes until it is complete."""

    argv: list
    input_path: Path | None
    output_path: Path | None
    tmp_output_path: Path | None
    port: int | None = None  # a service's listening port (docs/services.md)


def tmp_output_for(output: Path, trace_id: str, attempt: int) -> Path:
    """Hidden per-attempt name in the same folder; renamed onto ``output`` only on success."""
    return output.with_name(f".{output.stem}.{trace_id}.a{attempt}.part{output.suffix}")


GLOBAL_OPTIONS = ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")  # no key wait, quiet, overwrite the tmp


def original_args(input_path: str, scale: str, codec: str, preset: str, crf: int, threads: int, output: str) -> list:
    """The encode arguments exactly as the original Tracekit's worker built them (docs/migrating.md, "Workload and
    profiles"): ``-i IN -vf scale=W:H -c:v CODEC -preset P -crf N [-threads:v T -filter_threads T] -c:a copy OUT``;
    the thread flags only when ``threads`` > 0."""
    args = ["-i", input_path, "-vf", f"scale={scale}", "-c:v", codec, "-preset", preset, "-crf", str(crf)]
    if threads > 0:
        args += ["-threads:v", str(threads), "-filter_threads", str(threads)]
    return args + ["-c:a", "copy", output]


def build_command(task: Task, inputs_root: Path, outputs_root: Path) -> Command:
    """The exact argv for ``task``; paths confined to their roots. Raises :class:`InvalidTask`."""
    prof = load_profiles()[task.profile]
    p = task.params
    in_path = resolve_inside(inputs_root, task.input, "input") if task.input else None
    out_path = resolve_inside(outputs_root, task.output, "output") if task.output else None
    if out_path is not None and out_path.suffix not in OUTPUT_SUFFIXES:
        raise InvalidTask(f"output suffix must be one of {', '.join(OUTPUT_SUFFIXES)}", trace_id=task.trace_id)
    tmp = tmp_output_for(out_path, task.trace_id, task.attempt) if out_path else None
    app = prof["app"]
    if app == "command":
        values = {"input": str(in_path or ""), "output": str(tmp or ""), "threads": str(p["threads"]),
                  "seconds": str(p.get("seconds", 0))}
        argv = [tok.format(**values) if any("{" + k + "}" in tok for k in values) else tok
                for tok in prof["argv"]]
        return Command(argv, in_path, out_path, tmp)
    if app == "service":
        return service_command(prof, p, in_path, out_path, tmp, inputs_root)
    ffmpeg = os.environ.get(FFMPEG_BIN_ENV, "ffmpeg")
    w, h = SCALE_RE.match(p["scale"]).groups()
    argv = [ffmpeg, *GLOBAL_OPTIONS]
    if prof.get("args") == "original":
        argv += original_args(str(in_path), f"{w}:{h}", p["codec"], p["preset"], p["crf"], p["threads"], str(tmp))
        return Command(argv, in_path, out_path, tmp)
    if app == "ffmpeg":
        argv += ["-i", str(in_path), "-vf", f"scale={w}:{h}"]
    else:
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30:duration={p['seconds']}"]
    argv += ["-c:v", p["codec"], "-preset", p["preset"], "-crf", str(p["crf"]), "-threads", str(p["threads"])]
    if p["codec"] == "libx265":
        argv += ["-x265-params", f"pools={p['threads']}:log-level=error"]
    argv += ["-an"]
    argv += [str(tmp)] if tmp else ["-f", "null", "-"]
    return Command(argv, in_path, out_path, tmp)


def free_port() -> int:
    """A TCP port free on this host now (the kernel's pick); the service binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def service_command(prof: dict, p: dict, in_path: Path | None, out_path: Path | None, tmp: Path | None,
                    inputs_root: Path) -> Command:
    """The argv of a ``service`` profile: the command placeholders plus ``{port}`` (the profile's, or a free one
    picked now), ``{python}`` (this interpreter, so the service has the toolkit's libraries) and ``{inputs}``."""
    port = prof["port"] or free_port()
    values = {"input": str(in_path or ""), "output": str(tmp or ""), "threads": str(p["threads"]),
              "seconds": str(p.get("seconds", 0)), "port": str(port), "python": sys.executable,
              "inputs": str(inputs_root)}
    argv = [tok.format(**values) if any("{" + k + "}" in tok for k in values) else tok for tok in prof["argv"]]
    return Command(argv, in_path, out_path, tmp, port)
