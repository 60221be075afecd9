"""Admin actions: ``clean`` (delete a run's Redis keys) and ``stop-node`` (stop this node's worker + collector)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import redis

from tracekit.control.lua import drop_libraries
from tracekit.control.placement import WEIGHER_TABLE
from tracekit.core import paths
from tracekit.core.errors import EXIT_FAILURE, Conflict
from tracekit.core.keys import Keys

# Key families of the control plane, for the SCAN fallback when no prefix separates the run.
_FAMILIES = ("q:*", "running:*", "cap:*", "cap_total:*", "run_count:*", "node:*", "hb:*")


def clean(client: redis.Redis, keys: Keys, force: bool) -> int:
    """Delete every control-plane key of this prefix (registry-driven, plus a SCAN of the prefix, never KEYS) and
    the prefix's Redis function libraries."""
    nodes = client.zrange(keys.nodes, 0, -1)
    alive = [n for n in nodes if client.exists(keys.heartbeat(n))]
    if (alive or client.exists(keys.scheduler_lock)) and not force:
        raise Conflict(f"workers alive ({', '.join(alive) or 'none'}) or a scheduler running "
                       f"({client.get(keys.scheduler_lock) or 'none'}); stop them first or pass --force")
    victims = set(keys.control_keys(nodes, tuple(WEIGHER_TABLE)))
    patterns = [f"{keys.prefix}*"] if keys.prefix else [*_FAMILIES, keys.services_pattern]
    for pat in patterns:
        victims.update(client.scan_iter(match=pat, count=1000))
    n = 0
    victims_l = sorted(victims)
    for i in range(0, len(victims_l), 500):
        n += client.delete(*victims_l[i:i + 500])
    libs = drop_libraries(client, keys.prefix)  # the run's Lua steps, which Redis keeps beside its keys
    print(f"deleted {n} key(s) and {libs} function librar{'y' if libs == 1 else 'ies'} with prefix "
          f"{keys.prefix!r} ({len(nodes)} registered node(s))")
    return 0


def _matches(pid: int, needle: str) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and any(needle in a for a in p.cmdline())
    except psutil.Error:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_node(run_id: str, node: str, timeout: float, now: bool) -> int:
    """SIGTERM this node's worker (waits for its running tasks; ``now``: a second signal stops them) and
    collector, via their pidfiles under logs/$RUN_ID/<node>/; waits up to ``timeout`` seconds."""
    targets = [("worker", paths.daemon_pidfile_path(run_id, node, "worker"), "worker.py"),
               ("collector", paths.daemon_pidfile_path(run_id, node, "collector"), "collect_sys")]
    live = []
    for name, pidfile, needle in targets:
        pid = _read_pid(pidfile)
        if pid is None or not _matches(pid, needle):
            print(f"{name}: not running ({pidfile})")
            continue
        os.kill(pid, signal.SIGTERM)
        if now and name == "worker":
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)  # second signal: forwarded to the running tasks
        live.append((name, pid, needle))
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = [t for t in live if _matches(t[1], t[2])]
        time.sleep(0.1)
    for name, pid, _ in live:
        print(f"{name} (pid {pid}) still running after {timeout:g} s (running tasks?); retry with --now")
    return EXIT_FAILURE if live else 0
