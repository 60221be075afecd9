"""Helpers shared by the node-side tests (real adapter, collector, ffmpeg, /proc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TOOLS, run_script, wait_for  # noqa: F401 (re-exported)
from tracekit.core import paths

FFMPEG_Q = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


def node_env(base: dict, node: str = "n1", **extra: str) -> dict:
    """The run env for one emulated node; no NTP traffic from tests."""
    env = dict(base, NODE_ID=node, TIME_SYNC="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def adapter_cmd(argv: list, wrapper: str = "cmd_wrapper.py") -> list:
    return [sys.executable, str(TOOLS / "adapters" / wrapper), "--", *argv]


def run_adapter(env: dict, argv: list, wrapper: str = "cmd_wrapper.py", timeout: float = 60, **tc: str):
    """Run one adapter to completion; returns CompletedProcess (text)."""
    e = dict(env)
    e.update({k: str(v) for k, v in tc.items()})
    return subprocess.run(adapter_cmd(argv, wrapper), env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_adapter(env: dict, argv: list, wrapper: str = "cmd_wrapper.py", **tc: str) -> subprocess.Popen:
    e = dict(env)
    e.update({k: str(v) for k, v in tc.items()})
    return subprocess.Popen(adapter_cmd(argv, wrapper), env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events(env: dict) -> list:
    p = paths.events_path(env["RUN_ID"], env["NODE_ID"])
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def event_of(env: dict, trace_id: str) -> dict:
    found = [e for e in events(env) if e.get("trace_id") == trace_id]
    assert len(found) == 1, f"expected one exec event for {trace_id}, got {len(found)}"
    return found[0]


def sample_rows(env: dict, trace_id: str | None = None, pid: int | None = None) -> list:
    """[(ts, mono, row)] of this node's samples, filtered by trace_id and/or pid."""
    p = paths.samples_path(env["RUN_ID"], env["NODE_ID"])
    out = []
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        tick = json.loads(line)
        for row in tick["procs"]:
            if (trace_id is None or row[2] == trace_id) and (pid is None or row[0] == pid):
                out.append((tick["ts"], tick["mono"], row))
    return out


def start_collector(env: dict) -> int:
    r = run_script("collect_sys.py", "start", env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(paths.node_dir(env["RUN_ID"], env["NODE_ID"]).joinpath("collector.pid").read_text())


def stop_collector(env: dict) -> None:
    r = run_script("collect_sys.py", "stop", env=env, timeout=30)
    assert r.returncode == 0, r.stderr



def sentinels(env: dict) -> dict:
    """{trace_id: sentinel dict} of the run's sentinel folder right now."""
    d = Path(env.get("PROC_PID_DIR") or paths.run_dir(env["RUN_ID"]) / "pids")
    out = {}
    if d.is_dir():
        for f in d.iterdir():
            if f.name.isdigit():
                try:
                    s = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                out[s["trace_id"]] = s
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def env_without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}


__all__ = ["FFMPEG_Q", "node_env", "run_adapter", "start_adapter", "events", "event_of", "sample_rows",
           "start_collector", "stop_collector", "wait_for", "sentinels", "alive", "env_without"]
