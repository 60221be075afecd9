"""Small, fast /proc readers (in the style of psutil's Linux backend, without its per-call overhead).

The collector reads a few fields of ``/proc/<pid>/stat`` for hundreds of PIDs per tick, so these
readers do one ``read`` per file and no object churn. Field numbers follow proc(5).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK: int = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
PROC = "/proc"


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` Tracekit uses (times in clock ticks, rss in pages)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    num_threads: int
    starttime: int
    rss_pages: int

    @property
    def cpu_ticks(self) -> int:
        """utime+stime of the process (all threads) plus its reaped children (cutime+cstime)."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(pid: int, text: str) -> ProcStat:
    """Parse the text of ``/proc/<pid>/stat``; comm may hold spaces and ')' so split at the last ')'."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    f = text[rpar + 2 :].split()
    # f[0] is field 3 (state): field n is f[n - 3].
    return ProcStat(
        pid=pid,
        comm=text[lpar + 1 : rpar],
        state=f[0],
        ppid=int(f[1]),
        utime=int(f[11]),
        stime=int(f[12]),
        cutime=int(f[13]),
        cstime=int(f[14]),
        num_threads=int(f[17]),
        starttime=int(f[19]),
        rss_pages=int(f[21]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when the process is gone."""
    try:
        with open(f"{PROC}/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return parse_stat(pid, text)
    except (ValueError, IndexError):
        return None


def starttime(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot), or None when the process is gone."""
    st = read_stat(pid)
    return st.starttime if st else None


def children(pid: int, num_threads: int = 1) -> list[int]:
    """Direct children of ``pid`` (needs CONFIG_PROC_CHILDREN); [] when gone or unsupported.

    A child is listed under the thread that forked it, so a multi-threaded process needs every
    thread's file; a single-threaded one needs one read.
    """
    try:
        tids = [str(pid)] if num_threads <= 1 else os.listdir(f"{PROC}/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    out: list[int] = []
    for tid in tids:
        try:
            fd = os.open(f"{PROC}/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            continue
        finally:
            os.close(fd)
        if data:
            out.extend(int(x) for x in data.split())
    return out


def descendants(pid: int, num_threads: int = 1) -> list[ProcStat]:
    """Stats of every live descendant of ``pid`` (breadth first)."""
    out: list[ProcStat] = []
    todo = children(pid, num_threads)
    seen: set[int] = set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        st = read_stat(c)
        if st is None:
            continue
        out.append(st)
        todo.extend(children(c, st.num_threads))
    return out


def all_pids() -> list[int]:
    """Every numeric entry of /proc."""
    return [int(n) for n in os.listdir(PROC) if n.isdigit()]


def boot_time_ms() -> float | None:
    """Boot time (``btime`` of /proc/stat, whole seconds) in epoch ms, refined by /proc/uptime."""
    try:
        with open(f"{PROC}/uptime") as fh:
            up = float(fh.read().split()[0])
        # uptime has 10 ms resolution while btime has 1 s: the difference is the better estimate.
        return round(time.time() * 1000 - up * 1000, 1)
    except (OSError, ValueError):
        return None


def cpus_allowed_of_threads(pid: int) -> dict[int, str]:
    """``Cpus_allowed_list`` of every thread of ``pid``: {tid: "0-1"}."""
    out: dict[int, str] = {}
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            text = Path(f"{PROC}/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        m = re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M)
        if m:
            out[int(tid)] = m.group(1)
    return out


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``; raises ValueError on bad input."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            a, b = int(lo), int(hi)
            if a > b or a < 0:
                raise ValueError(f"bad CPU range {part!r}")
            cpus.update(range(a, b + 1))
        else:
            n = int(part)
            if n < 0:
                raise ValueError(f"bad CPU number {part!r}")
            cpus.add(n)
    if not cpus:
        raise ValueError(f"empty CPU list {text!r}")
    return sorted(cpus)


def format_cpu_list(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the kernel's own notation)."""
    out: list[str] = []
    s = sorted(set(cpus))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


# ---- container id (docs/containers.md, "The container_id field") ----
# The id is the 64-hex container id in the cgroup path the runtime gives the container's processes:
#   docker (cgroupfs driver)    /docker/<id>                      systemd driver: /system.slice/docker-<id>.scope
#   podman                      /libpod_parent/libpod-<id>        systemd:        /machine.slice/libpod-<id>.scope
#   containerd (CRI)            .../cri-containerd-<id>.scope     or a bare /<id> under the pod's cgroup
#   CRI-O                       .../crio-<id>.scope
#   Kubernetes pods             /kubepods/<qos>/pod<uid>/<id>     /kubepods.slice/.../kubepods-...-pod<uid>.slice/...
# podman's monitor (``libpod-conmon-<id>``) and CRI-O's (``crio-conmon-<id>``) are no container process.
_CONTAINER_PART = re.compile(r"^(?:(?:docker|libpod|cri-containerd|crio|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")


def container_id_from_cgroup(text: str) -> str | None:
    """The container id named by the text of ``/proc/<pid>/cgroup`` (v1 and v2 lines), or None.

    The innermost (last) id of a path wins, so a container nested in another names its own id; lines are read
    in order and the first one naming a container decides (every hierarchy of one process names the same one).
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = None
        for part in path.split("/"):
            if "conmon" in part:
                found = None
                break
            m = _CONTAINER_PART.match(part)
            if m:
                found = m.group(1)
        if found:
            return found
    return None


def container_id(pid: int | str) -> str | None:
    """The container id of a live process (``container_id_from_cgroup`` of its ``/proc/<pid>/cgroup``), or None
    (no container, or the process is gone)."""
    try:
        with open(f"{PROC}/{pid}/cgroup") as fh:
            return container_id_from_cgroup(fh.read())
    except OSError:
        return None
