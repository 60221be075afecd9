"""Best-effort time synchronisation at collector start. Never fails the run, never steps the clock unless asked.

``TIME_SYNC=1`` (default): query the NTP pool ``NTP_POOL`` (default pool.ntp.org) with whichever client
is installed (``chronyc``, ``ntpdate -q``, ``sntp``) and log the measured offset.
``TIME_SYNC_STEP=1``: also step the clock (``ntpdate -b`` / ``sntp -S`` / ``chronyd -q``), root only.
``TIME_SYNC=0``: skip. Everything goes to ``logs/$RUN_ID/timesync.log``; the parser does not rely on it,
since the collector measures the offset to the controller itself (Redis TIME, node.json ``clock``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_POOL = "pool.ntp.org"


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def plan(pool: str, step: bool, which=shutil.which) -> list | None:
    """The command to run (pure: ``which`` finds the clients), or None when no client is installed."""
    if step:
        if which("ntpdate"):
            return ["ntpdate", "-b", pool]
        if which("sntp"):
            return ["sntp", "-S", pool]
        if which("chronyd"):
            return ["chronyd", "-q", f"server {pool} iburst"]
        return None
    if which("ntpdate"):
        return ["ntpdate", "-q", pool]
    if which("sntp"):
        return ["sntp", pool]
    if which("chronyc"):
        return ["chronyc", "tracking"]  # the local daemon's view; sends nothing to the pool
    return None


def sync(log_path: Path, enabled: bool | None = None, pool: str | None = None, step: bool | None = None,
         timeout_s: float = 15.0) -> str:
    """Run the best-effort sync and append what happened to ``log_path``; returns a one-word outcome."""
    env = os.environ
    enabled = env.get("TIME_SYNC", "1") != "0" if enabled is None else enabled
    pool = pool or env.get("NTP_POOL") or DEFAULT_POOL
    step = env.get("TIME_SYNC_STEP", "0") == "1" if step is None else step
    lines = [f"[{_utc()}] time sync: enabled={int(enabled)} pool={pool} step={int(step)}"]
    outcome = "skipped"
    try:
        if not enabled:
            lines.append("  TIME_SYNC=0: skipped")
        elif step and os.geteuid() != 0:
            lines.append("  stepping needs root: skipped (the clock is left as it is)")
        else:
            cmd = plan(pool, step)
            if cmd is None:
                lines.append("  no NTP client (ntpdate, sntp, chronyc/chronyd) installed: skipped; "
                             "the system's own time daemon, if any, keeps the clock")
            else:
                lines.append(f"  before: {_utc()}  running: {' '.join(cmd)}")
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
                out = (r.stdout + r.stderr).strip()[-2000:]
                lines.append(f"  after: {_utc()}  exit={r.returncode}")
                lines.extend(f"  | {x}" for x in out.splitlines())
                outcome = "ok" if r.returncode == 0 else "failed"
    except (OSError, subprocess.SubprocessError) as exc:
        lines.append(f"  error: {exc}")
        outcome = "failed"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    except OSError:
        pass
    return outcome
