"""The /proc collector: samples the node's tasks on absolute deadlines and writes raw cumulative counters.

Selection:
  * whitelist: every PID sentinel in ``PROC_PID_DIR`` whose ``node_id`` is this node's. The sentinel
    folder is listed on every tick, so a task is sampled at the first tick after it starts; the
    collector then writes ``<pid>.ack`` (sentinel.py) so the adapter of a task shorter than one
    interval can hold the zombie until it has been sampled.
  * match (``PROC_MATCH``, default ``^ffmpeg$|^ffprobe$``): processes whose name matches, when
    ``PROC_PID_DIR`` is not set explicitly (then the default sentinel folder is used as well). A
    matched process's matched descendants are counted in it, not twice.
Each sampled process also counts its live descendants (``cpu_ticks`` / ``rss_pages`` in schema.py), so
an application's child processes are followed. A PID is only sampled while its starttime equals the
sentinel's: a reused PID never merges two processes.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core import env as core_env
from tracekit.core import paths
from tracekit.core.clock import mono_ms, wall_ms
from tracekit.core.errors import Conflict, DependencyMissing, StepFailed, UsageError
from tracekit.core.schema import sample_row
from tracekit.node import cgroupfs, nodeinfo, procfs, sentinel, timesync

DEFAULT_INTERVAL_MS = 200
DEFAULT_MATCH = r"^ffmpeg$|^ffprobe$"
TOOLS = paths.REPO_ROOT / "tools"
PY_SCRIPT = TOOLS / "collect_sys.py"
SH_SCRIPT = TOOLS / "collect_sys.sh"


# ---- pidfiles, logs and running collectors ----


def collector_pidfile(rid: str, node: str) -> Path:
    """``logs/$RUN_ID/<node>/collector.pid`` (the same file the process supervisor uses)."""
    return paths.daemon_pidfile_path(rid, node, "collector")


def collector_logfile(rid: str, node: str) -> Path:
    """``logs/$RUN_ID/<node>/collector.log``."""
    return paths.daemon_log_path(rid, node, "collector")


def timesync_log(rid: str) -> Path:
    """``logs/$RUN_ID/timesync.log``."""
    return paths.run_dir(rid) / "timesync.log"


def _is_collector(pid: int) -> bool:
    """A live (non-zombie) process running one of the collector scripts."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    st = procfs.read_stat(pid)
    return st is not None and st.state != "Z" and b"collect_sys" in cmd


def _read_pidfile(p: Path) -> int | None:
    try:
        return int(p.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_collector(rid: str, node: str) -> tuple[int, float] | None:
    """(pid, interval_ms) of this node's live collector, or None."""
    pid = _read_pidfile(collector_pidfile(rid, node))
    if pid is None or not _is_collector(pid):
        return None
    interval = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        interval = json.loads(paths.node_meta_path(rid, node).read_text())["collector"]["interval_ms"]
    if not isinstance(interval, (int, float)):
        interval = float(os.environ.get("PROC_INTERVAL_MS") or DEFAULT_INTERVAL_MS)
    return pid, float(interval)


# ---- configuration ----


@dataclass
class CollectorConfig:
    """The collector's settings (environment variables of the original toolkit)."""

    run_id: str
    node_id: str
    stage: str | None
    pid_dir: Path
    whitelist_only: bool
    match: re.Pattern | None
    interval_ms: float
    time_sync: bool = True
    # the original toolkit's node variables: CPU_FREQ_MHZ (per-core MHz when /proc shows none), IFACE / VM_IP (the
    # interface toward the controller, recorded in node.json's collector entry)
    cpu_freq_mhz: float | None = None
    iface: str | None = None
    vm_ip: str | None = None

    @classmethod
    def from_env(cls, env: dict | None = None) -> CollectorConfig:
        """Settings from the environment; :class:`UsageError` with one line when one is malformed."""
        env = os.environ if env is None else env
        rid = paths.run_id(env.get("RUN_ID"))
        node = paths.node_id(env.get("NODE_ID"))
        raw = env.get("PROC_INTERVAL_MS") or str(DEFAULT_INTERVAL_MS)
        try:
            interval = float(raw)
        except ValueError:
            raise UsageError(f"PROC_INTERVAL_MS must be a number of milliseconds, got {raw!r}") from None
        if not 10 <= interval <= 3_600_000:
            raise UsageError(f"PROC_INTERVAL_MS must be in 10..3600000, got {raw}")
        explicit = bool(env.get("PROC_PID_DIR"))
        pattern = env.get("PROC_MATCH", DEFAULT_MATCH)
        match = None
        if pattern and not explicit:
            try:
                match = re.compile(pattern)
            except re.error as exc:
                raise UsageError(f"PROC_MATCH is not a valid regular expression: {exc}") from None
        if env.get("CONTAINER"):
            raise UsageError("CONTAINER (the original shell collector's in-container sampling) is not supported: a "
                             "container's processes are host processes, sampled through the PID sentinels their "
                             "adapter writes (or by name with PROC_MATCH); unset CONTAINER")
        return cls(
            cpu_freq_mhz=core_env.cpu_freq_mhz(env.get(core_env.CPU_FREQ_MHZ) or ""),
            iface=env.get("IFACE") or None,
            vm_ip=env.get("VM_IP") or None,
            run_id=rid,
            node_id=node,
            stage=env.get("STAGE") or None,
            pid_dir=Path(env["PROC_PID_DIR"]) if explicit else paths.pid_dir(rid),
            whitelist_only=explicit,
            match=match,
            interval_ms=interval,
            time_sync=env.get("TIME_SYNC", "1") != "0",
        )

    @property
    def mode(self) -> str:
        """``py-whitelist`` or ``py-whitelist+match`` (recorded in node.json)."""
        return "py-whitelist" if self.match is None else "py-whitelist+match"


# ---- sampling (/proc reads, tracked processes, one tick) ----


def _open_stat(path: str) -> int:
    """An fd on /proc/<pid>/stat, or -1 when out of descriptors (then each tick opens and closes)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return -1
        raise


def _read_once(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _close(t: Tracked) -> None:
    for fd in (t.fd, t.kids_fd, t.sched_fd):
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    t.fd = t.kids_fd = t.sched_fd = None
    t.idle = False


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: the collector keeps one fd per sampled process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Tracked:
    """A sentinel this node samples (a slotted class: the sampler touches these attributes per PID per tick)."""

    __slots__ = ("pid", "starttime", "trace_id", "cgroup", "inode", "stat_path", "starttime_b", "kid_phase",
                 "acked", "final_acked", "has_kids", "fd", "kids_fd", "gone", "last_b", "last_row", "single",
                 "sched_fd", "last_sched", "idle", "refresh_phase", "container_id")

    def __init__(self, pid: int, starttime: int, trace_id: str | None, cgroup: dict | None, inode: int,
                 kid_phase: int = 0) -> None:
        self.pid = pid
        self.starttime = starttime
        self.trace_id = trace_id
        self.cgroup = cgroup
        self.inode = inode
        self.stat_path = f"/proc/{pid}/stat"
        self.starttime_b = str(starttime).encode()
        self.kid_phase = kid_phase  # children are looked for on ticks where tick % kid_every == kid_phase
        self.acked = self.final_acked = False
        self.has_kids = False  # children seen at the last look: then they are followed every tick
        self.fd: int | None = None  # open /proc/<pid>/stat: bound to this very process, re-read with pread
        self.kids_fd: int | None = None  # open /proc/<pid>/task/<pid>/children
        self.gone = False
        self.last_b = b""  # the stat line of the last tick and the row made of it
        self.last_row: list = []
        self.single = False  # one thread at the last look
        self.sched_fd: int | None = None  # open /proc/<pid>/schedstat (single-threaded processes)
        self.last_sched = b""
        self.idle = False  # unchanged at the last look: check schedstat first
        self.refresh_phase = 0  # its stat line is re-read on ticks where tick % full_every == refresh_phase
        self.container_id = procfs.container_id(pid)  # read once: a process does not change containers


@dataclass
class Sampler:
    """One tick = one list of rows, each a ``schema.sample_row`` (the columns of ``schema.SAMPLE_COLUMNS``).

    Cost matters (bench/bench_collector.py): a tracked process costs one ``pread`` of its open
    ``/proc/<pid>/stat`` per tick; an unchanged line (an idle process) reuses the last row, and a
    single-threaded idle process is then checked with its ``schedstat`` (on-CPU ns), which the kernel
    produces at a third of the cost; the stat line is re-read as soon as it ran. Its children
    are looked for every ``kid_every`` ticks (about once a second, staggered), and
    every tick once it has some; a child's CPU is never lost either way, because the counters are
    cumulative and a reaped child's time moves into its parent's cutime/cstime. The sentinel folder
    is listed only when its mtime says it changed.
    """

    node_id: str
    pid_dir: Path
    match: re.Pattern | None = None
    kid_every: int = 5
    full_every: int = 25
    tracked: dict = field(default_factory=dict)  # name -> Tracked | None (another node's sentinel)
    inodes: dict = field(default_factory=dict)  # name -> inode
    ticks: int = 0
    _dir_mtime: int = -1
    _dir_scanned_ns: int = 0
    _live: list = field(default_factory=list)  # the tracked processes of this node
    _m_info: dict = field(default_factory=dict)  # match mode: pid -> (matches, ppid, next tick to look again)
    _m_cid: dict = field(default_factory=dict)  # match mode: (pid, starttime) -> container id (read once)

    def _dir_unchanged(self) -> bool:
        """True when the folder cannot have changed since the last listing (saves listing 512 entries)."""
        try:
            m = os.stat(self.pid_dir).st_mtime_ns
        except OSError:
            return False
        # mtime comes from a coarse clock: trust it only when the last change is well before our last listing
        same = m == self._dir_mtime and m < self._dir_scanned_ns - 50_000_000
        if not same:
            self._dir_mtime = m
        return same

    def scan(self) -> None:
        """Pick up new sentinels and drop the ones that are gone (and our acks for them)."""
        if self._dir_unchanged():
            return
        self._dir_scanned_ns = time.time_ns()
        seen: dict = {}
        try:
            with os.scandir(self.pid_dir) as it:
                for e in it:
                    if e.name.isdigit():
                        seen[e.name] = e.inode()
        except FileNotFoundError:
            pass
        for name in list(self.inodes):
            if seen.get(name) != self.inodes[name]:
                t = self.tracked.pop(name, None)
                del self.inodes[name]
                if t is not None:
                    _close(t)
                if t is not None and t.acked and name not in seen:
                    sentinel.remove_ack(self.pid_dir, t.pid)
        for name, ino in seen.items():
            if name in self.inodes:
                continue
            d = sentinel.read_sentinel(Path(self.pid_dir) / name)
            self.inodes[name] = ino
            # sentinels appear by atomic rename: an unreadable one stays unreadable (or is gone); ignore it
            mine = d is not None and d.get("node_id") == self.node_id and str(d["pid"]) == name
            t = (Tracked(d["pid"], d["starttime"], d.get("trace_id"), d.get("cgroup"), ino,
                         kid_phase=d["pid"] % self.kid_every) if mine else None)
            if t is not None:
                t.refresh_phase = d["pid"] % self.full_every  # staggered over the PIDs
            self.tracked[name] = t
        self._live = [t for t in self.tracked.values() if t is not None]

    @classmethod
    def for_interval(cls, node_id: str, pid_dir: Path, match: re.Pattern | None, interval_ms: float) -> Sampler:
        """The sampler the daemon uses at ``interval_ms``: children looked for about once a second, every
        stat line re-read at least every 5 s."""
        return cls(node_id, pid_dir, match, kid_every=max(1, round(1000 / interval_ms)),
                   full_every=max(1, round(5000 / interval_ms)))

    @staticmethod
    def _cg(cg: dict | None) -> tuple:
        if not cg:
            return None, None
        return cgroupfs.cpu_usage_us(cg), cgroupfs.memory_kb(cg)

    def _row(self, st: procfs.ProcStat, trace_id, cg: dict | None, desc: list) -> list:
        ticks = st.cpu_ticks + sum(d.cpu_ticks for d in desc)
        rss = st.rss_pages + sum(d.rss_pages for d in desc)
        cg_cpu_us, cg_mem_kb = self._cg(cg)
        key = (st.pid, st.starttime)
        cid = self._m_cid.get(key, False)
        if cid is False:
            cid = self._m_cid[key] = procfs.container_id(st.pid)
        return sample_row(pid=st.pid, starttime=st.starttime, trace_id=trace_id, cpu_ticks=ticks, rss_pages=rss,
                          cg_cpu_us=cg_cpu_us, cg_mem_kb=cg_mem_kb, comm=st.comm, container_id=cid)

    def tick(self) -> list:
        """Sample every tracked process now."""
        self.scan()
        self.ticks += 1
        phase = self.ticks % self.kid_every
        refresh = self.ticks % self.full_every
        rows: list = []
        covered: set[int] = set()
        follow = self.match is not None  # only match mode needs the set of covered PIDs
        pread = os.pread
        for t in self._live:
            if t.gone:
                continue
            try:  # hot path: one pread of an open file; parse only the fields we need
                if t.idle:
                    # single-threaded, childless and idle at the last look: its on-CPU ns (schedstat, far
                    # cheaper for the kernel than stat) unchanged means it has not run, so neither its stat
                    # line nor its (no) children changed -- only a running process forks. The stat line is
                    # still re-read every full_every ticks (RSS can shrink while it sleeps).
                    sched = pread(t.sched_fd, 256, 0)
                    if sched == t.last_sched and refresh != t.refresh_phase:
                        rows.append(t.last_row)
                        if follow:
                            covered.add(t.pid)
                        continue
                    t.idle = False
                if t.fd is None:
                    t.fd = _open_stat(t.stat_path)
                plain = not t.has_kids and not t.cgroup  # nothing but its own stat line makes its row
                candidate = plain and t.single and t.sched_fd is not None and t.sched_fd >= 0
                # schedstat before stat: a run in between shows at the next tick
                sched = pread(t.sched_fd, 256, 0) if candidate else None
                b = pread(t.fd, 4096, 0) if t.fd >= 0 else _read_once(t.stat_path)
                if b == t.last_b and plain:
                    if candidate:
                        # idle from now on if childless now: it cannot fork while it does not run
                        if t.kids_fd is None:
                            t.kids_fd = _open_stat(f"/proc/{t.pid}/task/{t.pid}/children")
                        t.idle = t.kids_fd >= 0 and not pread(t.kids_fd, 64, 0)
                        t.last_sched = sched
                    elif t.single and t.sched_fd is None:
                        t.sched_fd = _open_stat(f"/proc/{t.pid}/schedstat")
                    if t.idle or phase != t.kid_phase:
                        rows.append(t.last_row)  # same line, same row, nothing to parse
                        if follow:
                            covered.add(t.pid)
                        continue
                f = b[b.rindex(b")") + 2 :].split(None, 22)  # f[n - 3] is field n of proc(5)
                if f[19] != t.starttime_b:
                    raise ValueError("the PID belongs to another process now")
                t.single = f[17] == b"1"
            except (OSError, ValueError):
                t.gone = True  # reaped (an open fd never follows a reused PID) or never ours
                _close(t)
                continue
            ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            rss = int(f[21])
            zombie = f[0] == b"Z"
            if not zombie and (t.has_kids or phase == t.kid_phase):
                nthreads = int(f[17])
                if nthreads == 1 and not t.has_kids:  # cheap look: one pread of the open children file
                    if t.kids_fd is None:
                        t.kids_fd = _open_stat(f"/proc/{t.pid}/task/{t.pid}/children")
                    kids = os.pread(t.kids_fd, 4096, 0) if t.kids_fd >= 0 else b"?"
                    desc = procfs.descendants(t.pid, nthreads) if kids else []
                else:
                    desc = procfs.descendants(t.pid, nthreads)
                t.has_kids = bool(desc)
                for d in desc:
                    ticks += d.cpu_ticks
                    rss += d.rss_pages
                    covered.add(d.pid)
            cg_cpu_us, cg_mem_kb = self._cg(t.cgroup) if t.cgroup else (None, None)
            row = sample_row(pid=t.pid, starttime=t.starttime, trace_id=t.trace_id, cpu_ticks=ticks, rss_pages=rss,
                             cg_cpu_us=cg_cpu_us, cg_mem_kb=cg_mem_kb, container_id=t.container_id)
            rows.append(row)
            t.last_b, t.last_row = b, row
            if follow:
                covered.add(t.pid)
            if t.acked and not zombie:
                continue
            if zombie and not t.final_acked:  # exited, not yet reaped: this sample is its last
                sentinel.write_ack(self.pid_dir, t.pid, t.starttime, final=True)
                t.acked = t.final_acked = True
            elif not t.acked:
                sentinel.write_ack(self.pid_dir, t.pid, t.starttime)
                t.acked = True
        if self.match is not None:
            rows.extend(self._match_rows(covered))
        return rows

    def _match_rows(self, covered: set) -> list:
        """Rows of processes whose name matches ``PROC_MATCH`` (not already covered by a sentinel).

        A matching process is read every tick; any other is looked at again every ``kid_every`` ticks
        (it may exec into a matching program meanwhile), which keeps match mode cheap on busy hosts.
        """
        pids = [int(n) for n in os.listdir(procfs.PROC) if n.isdigit()]
        info = self._m_info
        if len(info) > 2 * len(pids) + 64:
            live = set(pids)
            for pid in [p for p in info if p not in live]:
                del info[pid]
            for key in [k for k in self._m_cid if k[0] not in live]:
                del self._m_cid[key]
        matched: list = []
        for pid in pids:
            i = info.get(pid)
            if i is not None and not i[0] and self.ticks < i[2]:
                continue
            st = procfs.read_stat(pid)
            if st is None:
                continue
            m = bool(self.match.search(st.comm))
            info[pid] = (m, st.ppid, self.ticks + self.kid_every)
            if m and pid not in covered:
                matched.append(st)
        tops = {st.pid for st in matched}
        rows = []
        for st in matched:
            # skip a process whose ancestor is matched or whitelisted: that one counts it
            p, hops, top = st.ppid, 0, True
            while p > 1 and hops < 64:
                if p in tops or p in covered:
                    top = False
                    break
                i = info.get(p)
                if i is None:
                    break
                p, hops = i[1], hops + 1
            if top:
                rows.append(self._row(st, None, None, procfs.descendants(st.pid, st.num_threads)))
        return rows


# ---- the sampling loop (tick lines, stop flag, foreground run) ----

# One encoder for the life of the collector: json.dumps with options builds a new one per call, which
# costs more than encoding a tick of 64 rows (bench/bench_collector.py).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def tick_line(ts: float, mono: float, rows: list) -> bytes:
    """One samples.jsonl line (schema.SAMPLE_TICK_FIELDS), newline included."""
    return (_ENCODE({"ts": round(ts, 3), "mono": round(mono, 3), "procs": rows}) + "\n").encode()



def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} collector: {msg}", file=sys.stderr, flush=True)


def _claim_pidfile(cfg: CollectorConfig) -> Path:
    pf = collector_pidfile(cfg.run_id, cfg.node_id)
    pf.parent.mkdir(parents=True, exist_ok=True)
    other = _read_pidfile(pf)
    if other is not None and other != os.getpid() and _is_collector(other):
        raise Conflict(f"a collector for RUN_ID={cfg.run_id} node {cfg.node_id} already runs (pid {other}); "
                       "stop it first: make stop-collect")
    tmp = pf.with_name(f".{pf.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, pf)
    return pf


class _Wake(Exception):
    """Raised by the stop handler, only while the loop sleeps, to end the sleep at once."""


class StopFlag:
    """SIGTERM/SIGINT end the sampling loop: at once while it sleeps, else after the current tick."""

    def __init__(self) -> None:
        self.stop = False
        self.sleeping = False

    def handler(self, *_args) -> None:
        """Signal handler: stop after this tick, or now if sleeping."""
        self.stop = True
        if self.sleeping:
            raise _Wake

    def install(self) -> StopFlag:
        """Handle SIGTERM and SIGINT with this flag."""
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handler)
        return self


def settle_heap() -> None:
    """Before sampling: start-up objects never need scanning again, so the rare full collections stay cheap."""
    gc.collect()
    gc.freeze()


def sample_loop(sampler: Sampler, fd: int, interval_ms: float, flag: StopFlag | None = None,
                max_ticks: int | None = None, stats: dict | None = None) -> dict:
    """Tick on the absolute grid t0 + k x interval until stopped; one line per tick with rows to ``fd``.

    A tick that overran skips the missed deadlines (counted in ``late_ticks``) and keeps the grid, so
    the sampling never drifts. The loop sleeps with ``time.sleep`` (the cheapest wake-up Python has).
    """
    stats = stats if stats is not None else {"ticks": 0, "samples": 0, "late_ticks": 0}
    flag = flag or StopFlag()
    step = interval_ms / 1000
    t0 = time.monotonic()
    k = 0
    try:
        while not flag.stop:
            rows = sampler.tick()
            stats["ticks"] += 1
            if rows:
                try:
                    os.write(fd, tick_line(wall_ms(), mono_ms(), rows))
                    stats["samples"] += len(rows)
                except OSError as exc:  # e.g. disk full: keep sampling, say so once in a while
                    stats["write_errors"] = stats.get("write_errors", 0) + 1
                    if stats["write_errors"] in (1, 10, 100) or stats["write_errors"] % 1000 == 0:
                        _log(f"cannot write samples ({stats['write_errors']} ticks lost so far): {exc.strerror}")
            if max_ticks is not None and stats["ticks"] >= max_ticks:
                break
            k += 1
            now = time.monotonic()
            if t0 + k * step <= now:  # overran: skip the missed deadlines, keep the grid
                missed = int((now - t0) / step) + 1 - k
                stats["late_ticks"] += missed
                k += missed
            try:
                flag.sleeping = True
                if not flag.stop:
                    time.sleep(max(0.0, t0 + k * step - time.monotonic()))
            finally:
                flag.sleeping = False
    except _Wake:
        pass  # only ever raised while sleeping: no tick is cut short
    return stats


def run_foreground(cfg: CollectorConfig, max_ticks: int | None = None) -> int:
    """Sample until SIGTERM/SIGINT (or ``max_ticks``); writes samples, node.json and the log."""
    pf = _claim_pidfile(cfg)
    flag = StopFlag().install()
    cpu0 = _self_cpu_s()
    started = wall_ms()
    meta_path = paths.node_meta_path(cfg.run_id, cfg.node_id)
    info = {"mode": cfg.mode, "interval_ms": cfg.interval_ms, "started_ms": round(started, 3), "stopped_ms": None,
            "cpu_s": None, "ticks": 0, "samples": 0, "late_ticks": 0, "pid": os.getpid(),
            "pid_dir": str(cfg.pid_dir), "match": cfg.match.pattern if cfg.match else None,
            "cpu_freq_mhz_from": "CPU_FREQ_MHZ" if cfg.cpu_freq_mhz is not None else "/proc",
            "iface": cfg.iface or nodeinfo.default_iface(cfg.vm_ip), "vm_ip": cfg.vm_ip}
    meta = nodeinfo.node_meta(cfg.node_id, cfg.stage, None, info, cpu_freq_mhz=cfg.cpu_freq_mhz)
    _write_json_atomic(meta_path, meta)  # interval known to adapters at once; clock follows
    meta["clock"] = nodeinfo.measure_clock()
    _write_json_atomic(meta_path, meta)
    _log(f"started pid={os.getpid()} run={cfg.run_id} node={cfg.node_id} mode={cfg.mode} "
         f"interval={cfg.interval_ms:g}ms pid_dir={cfg.pid_dir} clock_offset_ms={meta['clock'].get('offset_ms')}")
    if meta["clock"].get("error"):
        _log(f"clock offset unknown: {meta['clock']['error']}")
    if cfg.time_sync:
        threading.Thread(target=timesync.sync, args=(timesync_log(cfg.run_id),), daemon=True).start()
    else:
        timesync.sync(timesync_log(cfg.run_id), enabled=False)
    raise_fd_limit()
    sampler = Sampler.for_interval(cfg.node_id, cfg.pid_dir, cfg.match, cfg.interval_ms)
    out_path = paths.samples_path(cfg.run_id, cfg.node_id)
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    settle_heap()
    try:
        sample_loop(sampler, fd, cfg.interval_ms, flag, max_ticks, info)
    finally:
        os.close(fd)
        for t in sampler.tracked.values():  # nobody would remove our acks after we are gone
            if t is not None:
                _close(t)
                if t.acked:
                    sentinel.remove_ack(cfg.pid_dir, t.pid)
        info.update(stopped_ms=round(wall_ms(), 3), cpu_s=round(_self_cpu_s() - cpu0, 4))
        meta["collector"] = info
        if meta["clock"].get("offset_ms") is not None:  # reachable at start: measure the drift over the run
            meta["clock_stop"] = nodeinfo.measure_clock()
        _write_json_atomic(meta_path, meta)
        if _read_pidfile(pf) == os.getpid():
            with contextlib.suppress(OSError):
                pf.unlink()
        _log(f"stopped: ticks={info['ticks']} samples={info['samples']} late_ticks={info['late_ticks']} "
             f"cpu_s={info['cpu_s']} ({100 * info['cpu_s'] / max(1e-9, (info['stopped_ms'] - started) / 1000):.2f}%"
             " of one CPU)")
    return 0


# ---- start and stop the daemon ----


def start_daemon(cfg: CollectorConfig, use_py: bool = True, wait_s: float = 10.0) -> int:
    """Start the collector in the background (own session); returns its pid once it runs."""
    running = running_collector(cfg.run_id, cfg.node_id)
    if running:
        raise Conflict(f"a collector for RUN_ID={cfg.run_id} node {cfg.node_id} already runs (pid {running[0]}); "
                       "stop it first: make stop-collect")
    if not use_py and not SH_SCRIPT.exists():
        raise DependencyMissing(f"USE_PY_COLLECT=0 needs {SH_SCRIPT}, which is missing", name=SH_SCRIPT.name)
    log = collector_logfile(cfg.run_id, cfg.node_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PY_SCRIPT), "run"] if use_py else ["bash", str(SH_SCRIPT)]
    env = dict(os.environ, RUN_ID=cfg.run_id, NODE_ID=cfg.node_id, PYTHONPATH=str(TOOLS))
    if not use_py:  # the shell collector never talks to Redis: it gets no password at all
        for name in ("TRACEKIT_REDIS_PASSWORD", "TRACEKIT_REDIS_PASSWORD_FILE", "TRACEKIT_REDIS_URL", "REDIS_URL"):
            env.pop(name, None)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, env=env,
                                start_new_session=True, close_fds=True)
    pf = collector_pidfile(cfg.run_id, cfg.node_id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _read_pidfile(pf) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise StepFailed(f"collector exited at start ({proc.returncode}): "
                                f"{tail[0] if tail else 'see ' + str(log)}")
        time.sleep(0.02)
    raise StepFailed(f"collector did not write its pidfile within {wait_s:g}s; see {log}")


def stop_daemons(rid: str, node: str | None, timeout_s: float = 10.0) -> list:
    """Stop this node's collector (``node``) or, with ``node=None``, every collector of the run.

    Returns [(node, pid, how)] with how = "stopped" | "killed" | "stale" (pidfile of a dead process).
    """
    nodes = [node] if node else sorted(d.name for d in paths.run_dir(rid).glob("*/"))
    pidfiles = [p for p in (collector_pidfile(rid, n) for n in nodes) if node or p.exists()]
    out = []
    for pf in pidfiles:
        pid = _read_pidfile(pf)
        if pid is None:
            continue
        n = pf.parent.name
        if not _is_collector(pid):
            with contextlib.suppress(OSError):
                pf.unlink()
            out.append((n, pid, "stale"))
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _is_collector(pid):
            time.sleep(0.02)
        how = "stopped"
        if _is_collector(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # a daemon leads its own session: takes any helper with it
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            how = "killed"
        with contextlib.suppress(OSError):
            if _read_pidfile(pf) == pid:
                pf.unlink()
        out.append((n, pid, how))
    return out
