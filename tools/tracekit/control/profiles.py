"""Task profiles are data (``profiles.json``); users add or override them in a file, without code.

A profile says what a task runs and what it asks for:
    ``app``        ``ffmpeg`` (transcode input -> output), ``ffmpeg-synth`` (encode a generated test
                   source for ``seconds``; needs no input file) or ``command`` (run ``argv``)
    ``cpu_units``  capacity units the scheduler reserves
    ``threads``, ``scale`` (WxH), ``codec``, ``preset``, ``crf``  ffmpeg parameters (defaults for tasks)
    ``args``       ffmpeg argument style: ``original`` (the original Tracekit's list:
                   ``-threads:v N -filter_threads N``, ``-c:a copy``; ``threads`` 0 = no thread flags) or
                   ``tracekit`` (default: ``-threads N``, x265 ``pools=N``, ``-an``). docs/migrating.md lists both.
    ``argv``       for ``command``: a list; ``{input}``, ``{output}``, ``{threads}`` and ``{seconds}`` are
                   the only placeholders, filled with validated values (no shell is involved)
    ``container``  optional, any app: ``{"runtime": "podman"|"docker", "image": ..., "memory": "512m"}`` runs the
                   command in a container of that image (docs/containers.md)
A ``service`` profile (docs/services.md) runs ``argv`` until it is stopped; besides the placeholders above its
argv may use ``{port}`` (the port the worker chose), ``{python}`` (the worker's interpreter) and ``{inputs}``
(the inputs root). Its fields (:func:`check_service`): ``port`` (0 = the worker picks a free one), ``ready``
(``{"tcp": true}`` or ``{"http": "/path"}``), ``ready_timeout_s``, ``seconds`` (longest run, then stopped),
``stop_grace_s`` (SIGTERM, then SIGKILL after this).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from tracekit.core.errors import BadInput, UsageError
from tracekit.core.paths import REPO_ROOT
from tracekit.node.container import check_spec

BUILTIN_FILE = Path(__file__).with_name("profiles.json")
LOCAL_FILE = REPO_ROOT / "profiles.local.json"
PROFILES_ENV = "TRACEKIT_PROFILES"

APPS = ("ffmpeg", "ffmpeg-synth", "command", "service")
CODECS = ("libx264", "libx265")
PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
PLACEHOLDERS = ("input", "output", "threads", "seconds")
SERVICE_PLACEHOLDERS = ("port", "python", "inputs")
SERVICE_DEFAULT_SECONDS = 3600.0  # a service nobody stops ends after this (payload ``params.seconds`` overrides)
ARG_STYLES = ("tracekit", "original")


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read profiles file {path}: {exc.strerror}", path=path) from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"profiles file {path} is not valid JSON: line {exc.lineno}: {exc.msg}", path=path) from None
    if not isinstance(data, dict):
        raise BadInput(f"profiles file {path}: expected a JSON object of name -> profile", path=path)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def check_profile(name: str, profile: dict) -> dict:
    """Validate one profile definition; return it with defaults filled in."""
    where = f"profile {name!r}"
    if not isinstance(profile, dict):
        raise BadInput(f"{where}: expected an object")
    app = profile.get("app", "ffmpeg")
    if app not in APPS:
        raise BadInput(f"{where}: app must be one of {', '.join(APPS)}")
    units = profile.get("cpu_units")
    if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= 1024:
        raise BadInput(f"{where}: cpu_units must be an integer 1..1024")
    out = {"app": app, "cpu_units": units, "threads": int(profile.get("threads", units))}
    style = profile.get("args", "tracekit")
    if style not in ARG_STYLES or (style == "original" and app != "ffmpeg"):
        raise BadInput(f"{where}: args must be one of {', '.join(ARG_STYLES)} ('original' only for app ffmpeg)")
    if not 0 <= out["threads"] <= 256 or (out["threads"] == 0 and style != "original"):
        raise BadInput(f"{where}: threads must be 1..256 (0 = no thread flags, only with args 'original')")
    out["args"] = style
    if app in ("ffmpeg", "ffmpeg-synth"):
        out.update(
            scale=profile.get("scale", "1920x1080"),
            codec=profile.get("codec", "libx264"),
            preset=profile.get("preset", "medium"),
            crf=int(profile.get("crf", 23)),
        )
        if out["codec"] not in CODECS or out["preset"] not in PRESETS:
            raise BadInput(f"{where}: codec must be one of {CODECS}, preset one of {PRESETS}")
    if app == "ffmpeg-synth":
        out["seconds"] = float(profile.get("seconds", 1.0))
    if app == "command":
        argv = profile.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadInput(f"{where}: argv must be a non-empty list of strings")
        out["argv"] = argv
        out["needs_input"] = bool(profile.get("needs_input", "{input}" in argv))
        out["seconds"] = float(profile.get("seconds", 0))
    if app == "service":
        out.update(check_service(where, profile))
    out["needs_input"] = app == "ffmpeg" or out.get("needs_input", False)
    if profile.get("container") is not None:
        try:
            spec = check_spec(profile["container"], where=f"{where}: container")
        except UsageError as exc:
            raise BadInput(str(exc)) from None
        out["container"] = {"runtime": spec.runtime, "image": spec.image, "memory": spec.memory}
    return out


def _num(where: str, profile: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = profile.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadInput(f"{where}: {key} must be a number in {lo:g}..{hi:g}")
    return float(v)


def check_service(where: str, profile: dict) -> dict:
    """The fields of a ``service`` profile, checked, with defaults (docs/services.md, "Service profiles")."""
    argv = profile.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BadInput(f"{where}: argv must be a non-empty list of strings")
    port = profile.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput(f"{where}: port must be an integer 0..65535 (0: the worker picks a free one)")
    if port == 0 and not any("{port}" in a for a in argv):
        raise BadInput(f"{where}: with port 0 the argv must pass {{port}} to the service")
    ready = profile.get("ready", {"tcp": True})
    http = ready.get("http") if isinstance(ready, dict) else None
    if not isinstance(ready, dict) or set(ready) - {"tcp", "http"} or (
            http is not None and not (isinstance(http, str) and http.startswith("/"))):
        raise BadInput(f"{where}: ready must be {{\"tcp\": true}} or {{\"http\": \"/path\"}}")
    return {"argv": argv, "port": port, "ready": {"http": http} if http else {"tcp": True},
            "needs_input": bool(profile.get("needs_input", "{input}" in argv)),
            "seconds": _num(where, profile, "seconds", SERVICE_DEFAULT_SECONDS, 0.1, 86400),
            "ready_timeout_s": _num(where, profile, "ready_timeout_s", 30.0, 0.1, 3600),
            "stop_grace_s": _num(where, profile, "stop_grace_s", 5.0, 0.0, 600)}


@lru_cache(maxsize=8)
def _load(extra: str | None) -> dict[str, dict]:
    merged = _read(BUILTIN_FILE)
    for path in (LOCAL_FILE, Path(extra) if extra else None):
        if path is not None and path.exists():
            merged.update(_read(path))
    return {name: check_profile(name, prof) for name, prof in merged.items()}


def load_profiles() -> dict[str, dict]:
    """All profiles: built-ins, then ``profiles.local.json``, then ``$TRACEKIT_PROFILES`` (later wins)."""
    return _load(os.environ.get(PROFILES_ENV))


def get_profile(name: str) -> dict:
    """One profile by name, or :class:`UsageError` listing the known names."""
    profiles = load_profiles()
    if name not in profiles:
        raise UsageError(f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})")
    return profiles[name]
