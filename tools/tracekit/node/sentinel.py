"""PID sentinels (schema.SENTINEL_FIELDS) and the collector's acknowledgements.

``$PROC_PID_DIR/<pid>``      written by the adapter's child before exec (atomic rename), removed by
                             the adapter after it reaped the process. The collector never removes it.
``$PROC_PID_DIR/<pid>.ack``  written by the collector once it has sampled that (pid, starttime);
                             removed by the collector when the sentinel is gone. The adapter reads it
                             to know a task shorter than one interval has been sampled (see adapter.py).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from tracekit.core.schema import SENTINEL_FIELDS

ACK_SUFFIX = ".ack"


def sentinel_path(pid_dir: Path, pid: int) -> Path:
    """``$PROC_PID_DIR/<pid>``."""
    return Path(pid_dir) / str(pid)


def ack_path(pid_dir: Path, pid: int) -> Path:
    """``$PROC_PID_DIR/<pid>.ack``."""
    return Path(pid_dir) / f"{pid}{ACK_SUFFIX}"


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_sentinel(pid_dir: Path, record: dict) -> Path:
    """Write the sentinel of ``record['pid']`` atomically (readers never see half a file)."""
    path = sentinel_path(pid_dir, record["pid"])
    _atomic_write(path, json.dumps({k: record.get(k) for k in SENTINEL_FIELDS}, separators=(",", ":")))
    return path


def read_sentinel(path: Path) -> dict | None:
    """A sentinel's content, or None when it is gone or unreadable."""
    try:
        with open(path) as fh:
            d = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("pid"), int) or not isinstance(d.get("starttime"), int):
        return None
    return d


def remove_sentinel(pid_dir: Path, pid: int, starttime: int) -> bool:
    """Remove our sentinel only if it still describes (pid, starttime); True when removed."""
    path = sentinel_path(pid_dir, pid)
    d = read_sentinel(path)
    if d is None or d.get("starttime") != starttime:
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def write_ack(pid_dir: Path, pid: int, starttime: int, final: bool = False) -> None:
    """Collector: (pid, starttime) has been sampled at least once (``final``: sampled after its exit)."""
    with contextlib.suppress(OSError):
        _atomic_write(ack_path(pid_dir, pid), f"{starttime} final" if final else str(starttime))


def is_acked(pid_dir: Path, pid: int, starttime: int, final: bool = False) -> bool:
    """Adapter: has the collector sampled this very process (not an earlier one with the same pid)?"""
    try:
        words = ack_path(pid_dir, pid).read_text().split()
    except OSError:
        return False
    return bool(words) and words[0] == str(starttime) and (not final or words[1:] == ["final"])


def remove_ack(pid_dir: Path, pid: int) -> None:
    """Collector: drop its ack of ``pid`` (the sentinel is gone, or the collector stops)."""
    with contextlib.suppress(OSError):
        ack_path(pid_dir, pid).unlink()
