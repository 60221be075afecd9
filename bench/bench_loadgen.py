"""The load generator (``tracekit-loadgen``) against the demo service's endpoints, beside a reference client.

- ``loadgen_open_rate``: open loop at a constant 2,000 requests/s on ``/ping`` (the trivial endpoint) for a few
  seconds: the rate achieved (sent / span), errors, and the generator's own CPU (share of one core, µs per
  request). Baseline: the reference client's saturation throughput on the same server (``wrk``, closed loop).
  Target: >= 2,000 requests/s, no error.
- ``loadgen_p50_thumb`` / ``loadgen_p50_ping``: closed loop, one connection, same endpoint: our p50 latency vs
  ``wrk --latency``'s p50. ``/thumb`` does real ffmpeg work per request (target: ratio within 0.9..1.1);
  ``/ping`` answers in ~40 µs, so there the client's own cost per request (aiohttp: ~150 µs of Python between
  the two time stamps) is most of the latency: reported, no target a Python client can meet.
- ``loadgen_saturation``: closed loop with 16 connections: requests/s, ours vs wrk's.

The reference is Debian's ``wrk`` (``apt-get install -y wrk``); without it the comparisons are skipped with a
message. Run: ``python3 bench/bench_loadgen.py [--full]`` (or via ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
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


def wrk(url: str, conns: int, seconds: float) -> tuple[float, float]:
    """``wrk --latency`` closed loop: (requests/s, p50 ms)."""
    out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds:g}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    return rps, _us(m.group(1), m.group(2))


def _rate(lines: list[dict], meta: dict) -> float:
    span = (max(x["ts_end"] for x in lines) - min(x["ts_send"] for x in lines)) / 1000
    return len(lines) / span


def _p50(lines: list[dict]) -> float:
    return percentile([x["ts_end"] - x["ts_send"] for x in lines if not x["error"]], 50)


def run(quick: bool = True) -> list[dict]:
    secs = 3.0 if quick else 10.0
    rows = []
    have_wrk = shutil.which("wrk") is not None
    if not have_wrk:
        print("bench_loadgen: wrk not installed (apt-get install -y wrk): reference comparisons skipped",
              file=sys.stderr)
    svc = Service()
    try:
        ref_sat = wrk(svc.url + "/ping", 16, secs) if have_wrk else None
        lines, meta = loadgen(svc.url, "/ping", "--rate", "2000", "--duration", f"{secs:g}")
        rate = _rate(lines, meta)
        errors = meta["errors"]
        span = (meta["ts_finish"] - meta["ts_begin"]) / 1000
        rows.append({"bench": "loadgen_open_rate", "metric": f"req/s open loop @2000/s ({errors} errors)",
                     "ours": rate, "baseline": ref_sat[0] if ref_sat else None,
                     "ratio": rate / ref_sat[0] if ref_sat else None, "target": ">= 2000 req/s, 0 errors"})
        rows.append({"bench": "loadgen_overhead", "metric": "generator CPU % of one core @2000/s (µs/request)",
                     "ours": 100 * meta["cpu_s"] / span, "baseline": 1e6 * meta["cpu_s"] / len(lines),
                     "ratio": None, "target": "reported"})
        for name, path, conns, target in (
                ("loadgen_p50_ping", "/ping", 1, "reported (client's own ~150 µs/request dominate)"),
                ("loadgen_p50_thumb", "/thumb?t=1.0&w=320", 1, "ratio 0.9..1.1")):
            lines, _ = loadgen(svc.url, path, "--concurrency", str(conns), "--duration", f"{secs:g}")
            ours = _p50(lines)
            ref = wrk(svc.url + path, conns, secs)[1] if have_wrk else None
            rows.append({"bench": name, "metric": f"p50 ms, closed loop c={conns} {path}", "ours": ours,
                         "baseline": ref, "ratio": ours / ref if ref else None, "target": target})
        lines, meta = loadgen(svc.url, "/ping", "--concurrency", "16", "--duration", f"{secs:g}")
        ours = _rate(lines, meta)
        rows.append({"bench": "loadgen_saturation", "metric": "req/s closed loop c=16 /ping", "ours": ours,
                     "baseline": ref_sat[0] if ref_sat else None, "ratio": ours / ref_sat[0] if ref_sat else None,
                     "target": "reported"})
    finally:
        svc.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10 s runs instead of 3 s")
    print_table(run(quick=not ap.parse_args().full))


if __name__ == "__main__":
    main()
