"""The load generator (docs/services.md, "Load generator"): drive HTTP requests at one service task, record one
line per request.

It aims only at the address the worker published for the service (``keys.service``), or with ``--url`` at a
loopback address (a local benchmark); the mix holds relative paths only (:mod:`loadplan`). Every request is a
line of ``schema.REQUEST_RAW_FIELDS``; its times come from one monotonic clock anchored once to the wall clock
plus the measured offset to the controller's clock (Redis ``TIME``), so they are on the CTS time base with µs
resolution and never jump. ``--procs P`` splits the schedule over P processes (request ``n`` goes to process
``n mod P``; each keeps the shared start time), for rates one event loop cannot drive.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import multiprocessing
import os
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

from tracekit.control.loadplan import (
    MAX_CONCURRENCY,
    MixEntry,
    MixPicker,
    arrival_offsets,
    check_bounds,
    closed_loop_next,
    percentile,
)
from tracekit.control.service import same_target
from tracekit.core.clock import wall_ms
from tracekit.core.errors import BadInput, StepFailed, UsageError
from tracekit.core.schema import LOADGEN_META_FIELDS, REQUEST_RAW_FIELDS, SERVER_TIME_HEADER

MAX_IN_FLIGHT = 1024  # open loop: connections at most; later arrivals wait for one (their ts_send says when)


@dataclass
class LoadSpec:
    """What to send: target URL (checked), mix, mode and bounds."""

    url: str
    trace_id: str
    mix: list[MixEntry]
    mode: str = "open"  # "open" | "closed"
    rate: float = 100.0
    arrival: str = "constant"
    concurrency: int = 1
    duration_s: float | None = None
    count: int | None = None
    timeout_s: float = 10.0
    seed: int = 0
    procs: int = 1
    clock_offset_ms: float = 0.0
    clock_rtt_ms: float | None = None


def is_loopback_url(url: str) -> bool:
    """``url`` is http(s) to a loopback address (127.0.0.0/8, ::1, localhost)."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return False
    if u.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(u.hostname).is_loopback
    except ValueError:
        return False


def check_target(url: str, published: str | None) -> str:
    """The guard: the URL must be the service's published address, or loopback when no service is named."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query:
        raise UsageError(f"target must be http://host:port with no path, got {url!r}")
    if published is not None:
        if not same_target(url, published):
            raise UsageError(f"target {url} is not the service's published address {published}: refused")
    elif not is_loopback_url(url):
        raise UsageError(f"target {url} is not a loopback address: name the service (--service) instead")
    return url.rstrip("/")


def wait_for_service(client, keys, trace_id: str, wait_s: float) -> str:
    """The published URL of service ``trace_id`` once it is ready (polls ``keys.service``); :class:`StepFailed`
    if it stopped or is not ready within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    state = None
    while time.monotonic() < deadline:
        h = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
             for k, v in client.hgetall(keys.service(trace_id)).items()}
        state = h.get("state")
        if state == "ready":
            return h["url"]
        if state in ("stopping", "stopped"):
            raise StepFailed(f"service {trace_id} is {state} ({h.get('stop_reason')}): nothing to drive")
        time.sleep(0.1)
    raise StepFailed(f"service {trace_id} not ready after {wait_s:g} s (state: {state or 'not published'})")


# ---- sending ----


# The request whose bytes are on the wire: [t_send, t_first_byte, t_last_byte] (perf_counter ns), set by ``_one``
# in its own task's context; the socket reads it when aiohttp hands it the request's bytes.
WIRE: contextvars.ContextVar[list] = contextvars.ContextVar("tracekit_loadgen_wire")


class WireSocket(socket.socket):
    """A TCP socket that time-stamps the request's bytes at the system calls: the first ``send`` of a request
    (its bytes handed to the kernel), the first and the last ``recv`` that returned response bytes.

    aiohttp's own code between building a request and completing its response (~150 µs of Python per request on
    this machine, docs/services.md "Benchmark") is then outside the measured latency, as it is for ``wrk``,
    whose time stamps are taken around its ``write``/``read`` calls. The asyncio selector transports call these
    methods (uvloop would not: it uses the file descriptor directly, one more reason for the default loop).
    """

    __slots__ = ("rec",)

    def stamp_send(self) -> None:
        rec = WIRE.get(None)
        if rec is not None and rec[0] is None:
            rec[0] = time.perf_counter_ns()
        self.rec = rec  # the request now owning this connection: its response's bytes are stamped into it

    def stamp_recv(self, got: int) -> None:
        t = time.perf_counter_ns()
        rec = self.rec
        if got and rec is not None:
            if rec[1] is None:
                rec[1] = t
            rec[2] = t

    def send(self, data, *args) -> int:  # noqa: D102 - socket.socket's
        self.stamp_send()
        return super().send(data, *args)

    def sendmsg(self, buffers, *args) -> int:  # noqa: D102 - socket.socket's
        self.stamp_send()
        return super().sendmsg(buffers, *args)

    def recv(self, bufsize: int, *args) -> bytes:  # noqa: D102 - socket.socket's
        data = super().recv(bufsize, *args)
        self.stamp_recv(len(data))
        return data

    def recv_into(self, buffer, *args) -> int:  # noqa: D102 - socket.socket's
        got = super().recv_into(buffer, *args)
        self.stamp_recv(got)
        return got


def wire_socket(addr_info) -> socket.socket:
    """aiohttp's ``socket_factory``: a :class:`WireSocket` for the address family of ``addr_info``."""
    family, type_, proto, _, _ = addr_info
    sock = WireSocket(family, type_, proto)
    sock.rec = None
    return sock


class Clock:
    """Monotonic time anchored once to wall time + offset: controller epoch ms with µs resolution."""

    def __init__(self, offset_ms: float, anchor: tuple[float, int] | None = None) -> None:
        self.wall0, self.perf0 = anchor or (wall_ms() + offset_ms, time.perf_counter_ns())

    def at(self, perf_ns: int) -> float:
        return round(self.wall0 + (perf_ns - self.perf0) / 1e6, 3)


async def _one(session, spec: LoadSpec, n: int, entry: MixEntry, sched_ns: int | None, clock: Clock,
               out: list) -> None:
    """Send one request; append its raw tuple to ``out`` (``sched_ns`` None: closed loop, scheduled = sent).

    Its times are the wire's (:class:`WireSocket`) when the request reached the socket and its response came
    back; otherwise (connection errors) those taken here around aiohttp's calls."""
    t_send = time.perf_counter_ns()
    closed = sched_ns is None
    wire = [None, None, None]
    WIRE.set(wire)  # this task's own context: the socket stamps this request's bytes into ``wire``
    t_fb = status = server = None
    nbytes = 0
    error = None
    try:
        async with session.request(entry.method, spec.url + entry.path, data=entry.body or None) as resp:
            t_fb = time.perf_counter_ns()
            status = resp.status
            body = await resp.read()
            nbytes = len(body)
            hv = resp.headers.get(SERVER_TIME_HEADER)
            if hv is not None and hv.isdigit():
                server = int(hv) / 1000
    except asyncio.TimeoutError:
        error = "timeout"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    t_end = time.perf_counter_ns()
    if error is None and wire[0] is not None and wire[2] is not None:
        t_send, t_fb, t_end = wire  # the wire's times (see WireSocket)
    if closed:
        sched_ns = t_send
    out.append((n, entry.method, entry.path, clock.at(sched_ns), clock.at(t_send),
                clock.at(t_fb) if t_fb is not None else None, clock.at(t_end), status, len(entry.body), nbytes,
                error, server))


async def _drive(spec: LoadSpec, part: int, clock: Clock, start_ns: int) -> list:
    """Send this process's share of the requests; the raw tuples (see ``_one``)."""
    out: list = []
    if spec.mode == "open":
        offsets = arrival_offsets(spec.rate, spec.duration_s, spec.count, spec.arrival, spec.seed)
    else:
        offsets = None
    limit = MAX_IN_FLIGHT if spec.mode == "open" else spec.concurrency
    conn = aiohttp.TCPConnector(limit=limit, force_close=False, enable_cleanup_closed=True,
                                socket_factory=wire_socket)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    picks = MixPicker([e.weight for e in spec.mix], spec.seed)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False,
                                     skip_auto_headers=("User-Agent",)) as session:
        if offsets is not None:
            tasks = set()
            for n in range(part, len(offsets), spec.procs):
                sched = start_ns + int(offsets[n] * 1e9)
                delay = (sched - time.perf_counter_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                t = asyncio.create_task(_one(session, spec, n, spec.mix[picks[n]], sched, clock, out))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
        else:
            counter = [part]

            async def client() -> None:
                while True:
                    n = counter[0]
                    if not closed_loop_next(n, (time.perf_counter_ns() - start_ns) / 1e9, spec.count,
                                            spec.duration_s):
                        return
                    counter[0] += spec.procs
                    await _one(session, spec, n, spec.mix[picks[n]], None, clock, out)

            while time.perf_counter_ns() < start_ns:
                await asyncio.sleep((start_ns - time.perf_counter_ns()) / 1e9)
            share = spec.concurrency // spec.procs + (1 if part < spec.concurrency % spec.procs else 0)
            await asyncio.gather(*(client() for _ in range(max(1, share))))
    return out


def _part(spec: LoadSpec, part: int, anchor: tuple[float, int], start_ns: int) -> list:
    # the default asyncio loop: uvloop was measured slower with aiohttp's client here (bench/bench_loadgen.py) and
    # would bypass WireSocket
    return asyncio.run(_drive(spec, part, Clock(0.0, anchor), start_ns))


def _child_part(args) -> tuple[list, float]:
    spec, part, anchor, start_ns = args
    rows = _part(spec, part, anchor, start_ns)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return rows, ru.ru_utime + ru.ru_stime


def run_load(spec: LoadSpec) -> tuple[list[dict], dict]:
    """Send the whole load; (request lines in request order, meta line)."""
    check_bounds(spec.count, spec.duration_s)
    if spec.mode == "closed" and not 1 <= spec.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 1 <= spec.procs <= max(1, os.cpu_count() or 1) * 4:
        raise UsageError("--procs must be 1..4 x cores")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    # a lead so every process (and its event loop) is up before the first arrival
    start_ns = time.perf_counter_ns() + (50_000_000 if spec.procs == 1 else 300_000_000)
    anchor = (wall_ms() + spec.clock_offset_ms, time.perf_counter_ns())
    clock = Clock(0.0, anchor)
    ts_begin = clock.at(start_ns)
    child_cpu = 0.0
    if spec.procs == 1:
        rows = _part(spec, 0, anchor, start_ns)
    else:
        ctx = multiprocessing.get_context("fork")  # perf_counter is one clock across forked processes
        with ctx.Pool(spec.procs) as pool:
            parts = pool.map(_child_part, [(spec, k, anchor, start_ns) for k in range(spec.procs)])
        rows = [r for p, _ in parts for r in p]
        child_cpu = sum(c for _, c in parts)
    ts_finish = clock.at(time.perf_counter_ns())
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime) + child_cpu
    rows.sort(key=lambda r: r[0])
    lines = []
    for (n, method, path, ts_sched, ts_send, ts_fb, ts_end, status, req_b, resp_b, error, server) in rows:
        lines.append(dict(zip(REQUEST_RAW_FIELDS, (
            f"{spec.trace_id}-r{n + 1}", spec.trace_id, method, path, ts_sched, ts_send, ts_fb, ts_end, status,
            req_b, resp_b, error, round(server, 3) if server is not None else None), strict=True)))
    meta = dict(zip(LOADGEN_META_FIELDS, (
        spec.trace_id, spec.url, spec.mode, spec.rate if spec.mode == "open" else None,
        spec.concurrency if spec.mode == "closed" else None, spec.arrival if spec.mode == "open" else None,
        spec.seed, spec.duration_s, spec.count, spec.timeout_s,
        [{"method": e.method, "path": e.path, "weight": e.weight, "body_bytes": len(e.body)} for e in spec.mix],
        round(spec.clock_offset_ms, 3), spec.clock_rtt_ms, ts_begin, ts_finish, len(lines),
        sum(1 for ln in lines if ln["error"] or (ln["status"] or 0) >= 500), round(cpu_s, 3)), strict=True))
    return lines, meta


def write_requests(path: Path, lines: list[dict], meta: dict) -> Path:
    """``<path>`` (JSON Lines) and ``<path stem>.meta.json`` beside it, each written whole then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for ln in lines:
            f.write(orjson.dumps(ln) + b"\n")
    tmp.replace(path)
    mpath = path.with_name(path.stem + ".meta.json")
    mpath.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def summary(lines: list[dict], meta: dict) -> str:
    """One line: sent, errors, achieved rate, latency p50/p90/p99 (ms), the generator's CPU."""
    lat = [ln["ts_end"] - ln["ts_send"] for ln in lines if not ln["error"]]
    span_s = max(1e-9, (meta["ts_finish"] - meta["ts_begin"]) / 1000)
    p = [percentile(lat, q) for q in (50, 90, 99)]
    fmt = "/".join("-" if x is None else f"{x:.2f}" for x in p)
    return (f"{len(lines)} requests, {meta['errors']} errors, {len(lines) / span_s:.0f} req/s over {span_s:.2f} s, "
            f"latency p50/p90/p99 {fmt} ms, generator CPU {meta['cpu_s']:.2f} s "
            f"({100 * meta['cpu_s'] / span_s:.0f} % of one core)")


def read_mix_file(path: str | None, default_path: str = "/") -> list[MixEntry]:
    """The mix from a file, or one ``GET default_path``."""
    from tracekit.control.loadplan import check_path, parse_mix

    if path is None:
        return [MixEntry("GET", check_path(default_path, "--path"))]
    try:
        return parse_mix(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"cannot read the request mix {path}: {exc.strerror}", path=path) from None
