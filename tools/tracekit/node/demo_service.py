"""The demo service (docs/services.md): an aiohttp.web HTTP server doing real work per request with ffmpeg.

    GET /ping             "pong": the trivial endpoint for benchmarks
    GET /ping?work_us=1000  the same after busy-looping that long on the CPU (0..MAX_WORK_US): a little work
    GET /thumb?t=1.5&w=320  one JPEG frame of the clip at ``t`` seconds, scaled to width ``w`` (ffmpeg per request)

Every response carries ``schema.SERVER_TIME_HEADER`` (``X-Handle-Us``): the server's own handling time in
microseconds, so a client's latency can be checked against it. The clip is ``--clip`` or, by default, a short
test clip generated once at start-up with ffmpeg (before the server listens, so readiness means "can serve").
SIGTERM stops it cleanly (exit 0).

Run: ``python -m tracekit.node.demo_service --port 8080 [--host 0.0.0.0] [--clip FILE]`` (the ``thumbsvc``
profile does this under the adapter).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from tracekit.core.schema import SERVER_TIME_HEADER

MAX_WIDTH = 1920
MAX_WORK_US = 100_000  # /ping's busy loop: bounded so one request cannot hold the event loop longer than 0.1 s
MAX_PARALLEL_FFMPEG = 4  # more requests queue inside the service (their wait is part of the handling time)


def make_clip(folder: Path, seconds: float = 3.0, size: str = "320x240") -> Path:
    """A short H.264 test clip (ffmpeg's testsrc2) in ``folder``."""
    path = folder / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25:duration={seconds:g}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def thumb_args(query: dict, clip_seconds: float) -> tuple[float, int]:
    """``t`` (clamped into the clip) and ``w`` (even, 16..MAX_WIDTH) from a query; ValueError when malformed."""
    t = float(query.get("t", "0"))
    w = int(query.get("w", "320"))
    if not (t == t) or t < 0:  # NaN or negative
        raise ValueError("t must be a number >= 0")
    if not 16 <= w <= MAX_WIDTH:
        raise ValueError(f"w must be 16..{MAX_WIDTH}")
    return min(t, max(0.0, clip_seconds - 0.1)), w - (w % 2)


@web.middleware
async def handling_time(request: web.Request, handler):
    """Stamp every response with the server's handling time (µs), errors included."""
    t0 = time.perf_counter_ns()
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        resp = exc
    resp.headers[SERVER_TIME_HEADER] = str((time.perf_counter_ns() - t0) // 1000)
    return resp


def work_us_arg(query) -> int:
    """``work_us`` from a query: 0..MAX_WORK_US (default 0); ValueError when malformed or out of range."""
    us = int(query.get("work_us", "0"))
    if not 0 <= us <= MAX_WORK_US:
        raise ValueError(f"work_us must be 0..{MAX_WORK_US}")
    return us


async def ping(request: web.Request) -> web.Response:
    try:
        us = work_us_arg(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if us:
        # busy on purpose (the work is CPU time, like a real handler's), not asyncio.sleep
        until = time.perf_counter_ns() + us * 1000
        while time.perf_counter_ns() < until:
            pass
    return web.Response(text="pong")


async def thumb(request: web.Request) -> web.Response:
    app = request.app
    try:
        t, w = thumb_args(dict(request.query), app["clip_seconds"])
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    async with app["ffmpeg_slots"]:
        proc = await asyncio.create_subprocess_exec(
            app["ffmpeg"], "-nostdin", "-hide_banner", "-loglevel", "error", "-ss", f"{t:.3f}", "-i",
            str(app["clip"]), "-frames:v", "1", "-vf", f"scale={w}:-2", "-f", "image2pipe", "-vcodec", "mjpeg", "-",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    if proc.returncode != 0 or not out:
        raise web.HTTPInternalServerError(text=f"ffmpeg failed: {err.decode(errors='replace')[-300:]}")
    return web.Response(body=out, content_type="image/jpeg")


def build_app(clip: Path, clip_seconds: float, ffmpeg: str = "ffmpeg") -> web.Application:
    """The aiohttp application (routes and the handling-time middleware)."""
    app = web.Application(middlewares=[handling_time])
    app["clip"], app["clip_seconds"], app["ffmpeg"] = clip, clip_seconds, ffmpeg
    app["ffmpeg_slots"] = asyncio.Semaphore(MAX_PARALLEL_FFMPEG)
    app.router.add_get("/ping", ping)
    app.router.add_get("/thumb", thumb)
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (see the module doc)."""
    ap = argparse.ArgumentParser(prog="demo_service", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clip", help="video clip to thumbnail (default: a generated 3 s test clip)")
    ap.add_argument("--clip-seconds", type=float, default=3.0, help="length of the generated clip")
    a = ap.parse_args(argv)
    ffmpeg = os.environ.get("FFMPEG_BIN", "ffmpeg")
    if shutil.which(ffmpeg) is None:
        print(f"demo_service: error: {ffmpeg} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tk-demo-svc-") as tmp:
        clip = Path(a.clip) if a.clip else make_clip(Path(tmp), a.clip_seconds)
        web.run_app(build_app(clip, a.clip_seconds, ffmpeg), host=a.host, port=a.port, print=None,
                    access_log=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
