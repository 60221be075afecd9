"""The load generator (``tracekit-loadgen``) against the demo service's endpoints, beside a reference client.

Every row is the median over R repetitions (quick: 3 x 2 s, ``--full``: 5 x 5 s); within a repetition ours and
the reference run back to back against the same server process, and the ratio is of the two medians.

- ``loadgen_open_rate``: open loop at a constant 2,000 requests/s on ``/ping`` (the trivial endpoint): the rate
  achieved (sent / span), errors, and the generator's own CPU (share of one core, µs per request). Baseline: the
  reference client's saturation throughput on the same server (``wrk -c16``). Target: >= 2,000 requests/s.
- ``loadgen_p50_*``: p50 latency, ours vs ``wrk -t1 -c1 --latency`` (closed loop, one connection: back to back)
  on the same path. Ours is closed loop with one connection too (``..._closed``), and open loop at a low fixed
  rate (``..._open``, 200/s: arrivals seldom queue, so its p50 is the service time as well). Debian's ``wrk`` is
  not wrk2 (no fixed-rate mode): its reference for the open-loop rows waits 1/rate after each response (its Lua
  ``delay()``), so client and server are idle between requests as in our open loop. Paths: ``/ping`` (the
  server answers in ~40 µs, so the client's own cost decides: reported as it is), ``/ping?work_us=1000`` (1 ms of
  server CPU per request) and ``/thumb`` (ffmpeg per request). Target: ratio 0.9..1.1.
- ``loadgen_saturation``: closed loop with 16 connections: requests/s, ours vs wrk's.

Our times are taken at the socket (``loadgen.WireSocket``: the send of the request's bytes, the recv of the last
response bytes), as wrk's are around its write/read calls. The reference is Debian's ``wrk`` (``apt-get install
-y wrk``); without it the comparisons are skipped with a message. Run: ``python3 bench/bench_loadgen.py [--full]``
(or via ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table
from tracekit.control.loadplan import percentile

PY = sys.executable
TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The demo service on a loopback port (own process), until closed."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([PY, "-m", "tracekit.node.demo_service", "--host", "127.0.0.1", "--port",
                                      str(self.port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the demo service did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def loadgen(url: str, path: str, *args: str) -> tuple[list[dict], dict]:
    """Run ``tools/loadgen.py`` (the real command); its request lines and meta."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "local.jsonl"
        subprocess.run([PY, str(TOOLS / "loadgen.py"), "--url", url, "--path", path, "--output", str(out), *args],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        meta = json.loads(out.with_name("local.meta.json").read_text())
    return lines, meta


def _us(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, conns: int, seconds: float, pace_ms: float | None = None) -> tuple[float, float]:
    """``wrk --latency``: (requests/s, p50 ms). Closed loop, or with ``pace_ms`` each connection waits that long
    after a response before its next request (wrk's Lua ``delay()``; wrk times a request from its send)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = []
        if pace_ms is not None:
            (Path(tmp) / "pace.lua").write_text(f"function delay() return {pace_ms:g} end\n")
            script = ["-s", str(Path(tmp) / "pace.lua")]
        out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds:g}s", "--latency", *script, url],
                             check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    return rps, _us(m.group(1), m.group(2))


def _rate(lines: list[dict], meta: dict) -> float:
    span = (max(x["ts_end"] for x in lines) - min(x["ts_send"] for x in lines)) / 1000
    return len(lines) / span


def _p50(lines: list[dict]) -> float:
    return percentile([x["ts_end"] - x["ts_send"] for x in lines if not x["error"]], 50)


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# (bench name, our loadgen mode arguments, path, target); wrk runs c=1 on the same path, closed loop, or paced
# like our open loop (the same gap between requests: both client and server wake from idle for each request)
P50_CASES = (
    ("loadgen_p50_ping_closed", ("--concurrency", "1"), "/ping", "reported as it is (client cost decides)"),
    ("loadgen_p50_ping_open", ("--rate", "200"), "/ping", "reported as it is (client cost decides)"),
    ("loadgen_p50_work1ms_closed", ("--concurrency", "1"), "/ping?work_us=1000", "ratio 0.9..1.1"),
    ("loadgen_p50_work1ms_open", ("--rate", "200"), "/ping?work_us=1000", "ratio 0.9..1.1"),
    ("loadgen_p50_thumb_closed", ("--concurrency", "1"), "/thumb?t=1.0&w=320", "ratio 0.9..1.1"),
)


def run(quick: bool = True) -> list[dict]:
    secs, reps = (2.0, 3) if quick else (5.0, 5)
    have_wrk = shutil.which("wrk") is not None
    if not have_wrk:
        print("bench_loadgen: wrk not installed (apt-get install -y wrk): reference comparisons skipped",
              file=sys.stderr)
    acc: dict[str, list] = {}

    def add(key: str, value) -> None:
        acc.setdefault(key, []).append(value)

    svc = Service()
    try:
        for _ in range(reps):
            add("ref_sat", wrk(svc.url + "/ping", 16, secs)[0] if have_wrk else None)
            lines, meta = loadgen(svc.url, "/ping", "--rate", "2000", "--duration", f"{secs:g}")
            span = (meta["ts_finish"] - meta["ts_begin"]) / 1000
            add("rate", _rate(lines, meta))
            add("errors", meta["errors"])
            add("cpu_pct", 100 * meta["cpu_s"] / span)
            add("cpu_us", 1e6 * meta["cpu_s"] / len(lines))
            for name, args, path, _ in P50_CASES:
                lines, _ = loadgen(svc.url, path, *args, "--duration", f"{secs:g}")
                add(name, _p50(lines))
                pace = None if args[0] == "--concurrency" else 1000 / float(args[1])
                add("wrk " + name, wrk(svc.url + path, 1, secs, pace)[1] if have_wrk else None)
            lines, meta = loadgen(svc.url, "/ping", "--concurrency", "16", "--duration", f"{secs:g}")
            add("sat", _rate(lines, meta))
    finally:
        svc.close()

    def ratio(a, b):
        return a / b if a is not None and b else None

    rate, ref_sat = _med(acc["rate"]), _med(acc["ref_sat"])
    rows = [{"bench": "loadgen_open_rate", "metric": f"req/s open loop @2000/s ({max(acc['errors'])} errors max)",
             "ours": rate, "baseline": ref_sat, "ratio": ratio(rate, ref_sat), "target": ">= 2000 req/s, 0 errors"},
            {"bench": "loadgen_overhead", "metric": "generator CPU % of one core @2000/s (baseline: µs/request)",
             "ours": _med(acc["cpu_pct"]), "baseline": _med(acc["cpu_us"]), "ratio": None, "target": "reported"}]
    for name, args, path, target in P50_CASES:
        ours, ref = _med(acc[name]), _med(acc["wrk " + name])
        mode = ("closed c=1 vs wrk c=1" if args[0] == "--concurrency"
                else f"open @{args[1]}/s vs wrk c=1 paced {1000 / float(args[1]):g} ms")
        rows.append({"bench": name, "metric": f"p50 ms, ours {mode}, {path}", "ours": ours,
                     "baseline": ref, "ratio": ratio(ours, ref), "target": target})
    sat = _med(acc["sat"])
    rows.append({"bench": "loadgen_saturation", "metric": "req/s closed loop c=16 /ping", "ours": sat,
                 "baseline": ref_sat, "ratio": ratio(sat, ref_sat), "target": "reported"})
    print(f"bench_loadgen: medians of {reps} repetitions of {secs:g} s; per repetition: "
          + json.dumps({k: [None if v is None else round(v, 4) for v in vs] for k, vs in acc.items()}),
          file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="5 repetitions of 5 s instead of 3 of 2 s")
    print_table(run(quick=not ap.parse_args().full))


if __name__ == "__main__":
    main()
