"""Task profiles are data (``profiles.json``); users add or override them in a file, without code.

A profile says what a task runs and what it asks for:
    ``app``        ``ffmpeg`` (transcode input -> output), ``ffmpeg-synth`` (encode a generated test
                   source for ``seconds``; needs no input file) or ``command`` (run ``argv``)
    ``cpu_units``  capacity units the scheduler reserves
    ``threads``, ``scale`` (WxH), ``codec``, ``preset``, ``crf``  ffmpeg parameters (defaults for tasks)
    ``argv``       for ``command``: a list; ``{input}``, ``{output}``, ``{threads}`` and ``{seconds}`` are
                   the only placeholders, filled with validated values (no shell is involved)
    ``container``  optional, any app: ``{"runtime": "podman"|"docker", "image": ..., "memory": "512m"}`` runs the
                   command in a container of that image (docs/containers.md)
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

APPS = ("ffmpeg", "ffmpeg-synth", "command")
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
    out["needs_input"] = app == "ffmpeg" or out.get("needs_input", False)
    if profile.get("container") is not None:
        try:
            spec = check_spec(profile["container"], where=f"{where}: container")
        except UsageError as exc:
            raise BadInput(str(exc)) from None
        out["container"] = {"runtime": spec.runtime, "image": spec.image, "memory": spec.memory}
    return out


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
