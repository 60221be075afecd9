#!/usr/bin/env python3
"""Parse + OpenDC export at scale vs DuckDB ``read_json`` -> parquet of the same ``proc_metrics.jsonl``.

Synthetic raw logs (``tracekit.cluster.synthlogs``, exact raw formats) of N process samples are parsed by
``tools/parse_cts.py`` and exported by ``tools/export_opendc.py``, each in its own process so wall time and peak
RSS are measured per step (``wait4``). The export runs twice: as a user runs it after ``make parse`` (it reads the
parser's binary row cache) and from ``proc_metrics.jsonl`` alone (cache removed: the like-for-like comparison).
The baseline, in the same invocation, is DuckDB reading the CTS ``proc_metrics.jsonl`` the parse wrote and
writing it to parquet. Quick mode: ~300 k samples (< 60 s); full mode (``--full``): 10 M samples (its targets:
peak RSS within 2 GB, time <= 1.5x DuckDB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table
from tracekit.cluster.synthlogs import SynthSpec, generate
from tracekit.trace import rowcache

HERE = Path(__file__).resolve().parent
TOOLS = HERE.parent / "tools"

SAMPLES_PER_TASK = 100  # task_ms (5-15 s) / interval (100 ms)
MB = 1024.0
DUCKDB_SCRIPT = """
import sys, duckdb
con = duckdb.connect()
con.execute("COPY (SELECT * FROM read_json(?, format='newline_delimited')) TO ? (FORMAT parquet)",
            [sys.argv[1], sys.argv[2]])
"""


def _timed(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a child process; (wall seconds, its peak RSS in MB). Raises with its stderr if it fails.

    Dirty pages of the previous step are flushed first: the kernel's write-back of gigabytes written just before
    would otherwise compete for the 2 cores with whatever step comes next."""
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {proc.returncode}: {err[-1500:]}")
    return wall, ru.ru_maxrss / MB


def run(quick: bool, samples: int | None = None, keep: bool = False) -> list[dict]:
    """Generate, parse, export and run the DuckDB baseline; rows for bench/run_all.py."""
    n = samples or (300_000 if quick else 10_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="tracekit-bench-"))
    try:
        run_dir = tmp / "run"
        spec = SynthSpec(nodes=2, cores=4, capacity=4, tasks=max(10, n // SAMPLES_PER_TASK), interval_ms=100,
                         task_ms=(5_000, 15_000), arrival_ms=(0, 50), progress=sys.stderr.isatty())
        t0 = time.perf_counter()
        truth = generate(run_dir, spec)
        gen_s = time.perf_counter() - t0
        print(f"generated {truth.samples} samples / {len(truth.tasks)} tasks in {gen_s:.1f} s "
              f"({sum(f.stat().st_size for f in run_dir.rglob('samples.jsonl')) / 1e6:.0f} MB of samples)",
              file=sys.stderr)
        env = dict(os.environ, PYTHONPATH=str(TOOLS))
        parse_s, parse_mb = _timed([sys.executable, str(TOOLS / "parse_cts.py"), "--input", str(run_dir),
                                    "--quiet"], env)
        export = [sys.executable, str(TOOLS / "export_opendc.py"), "--input", str(run_dir), "--quiet", "--output"]
        export_s, export_mb = _timed([*export, str(tmp / "opendc")], env)
        cts_dir = run_dir / "CTS"
        rowcache.drop_rows_cache(cts_dir)
        json_s, json_mb = _timed([*export, str(tmp / "opendc-json")], env)
        pm = cts_dir / "proc_metrics.jsonl"
        duck_s, duck_mb = _timed([sys.executable, "-c", DUCKDB_SCRIPT, str(pm), str(tmp / "duck.parquet")], env)
        print(f"proc_metrics.jsonl: {pm.stat().st_size / 1e6:.0f} MB; parse {parse_s:.2f} s / {parse_mb:.0f} MB, "
              f"export {export_s:.2f} s / {export_mb:.0f} MB (from JSONL {json_s:.2f} s / {json_mb:.0f} MB), "
              f"duckdb {duck_s:.2f} s / {duck_mb:.0f} MB", file=sys.stderr)
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        size = f"{truth.samples / 1e6:.2f}M samples"
        rows = [
            {"bench": "parse_export", "metric": f"export s, proc_metrics.jsonl -> parquet ({size})",
             "ours": json_s, "baseline": duck_s, "ratio": json_s / duck_s, "target": "<= 1.5 (vs DuckDB)"},
            {"bench": "parse_export", "metric": f"export s after parse (row cache) ({size})",
             "ours": export_s, "baseline": duck_s, "ratio": export_s / duck_s, "target": "info"},
            {"bench": "parse_export", "metric": f"parse+export s, raw logs -> CTS+audit -> parquet ({size})",
             "ours": parse_s + export_s, "baseline": duck_s, "ratio": (parse_s + export_s) / duck_s,
             "target": "<= 1.5 (vs DuckDB)"},
            {"bench": "parse_export", "metric": f"parse s alone, raw logs -> CTS+audit+plots ({size})",
             "ours": parse_s, "baseline": duck_s, "ratio": parse_s / duck_s,
             "target": f"info: {parse_s * 1e6 * (os.cpu_count() or 1) / max(truth.samples, 1):.2f} core-us/sample"},
            {"bench": "parse_export", "metric": f"parse peak RSS MB ({size})", "ours": parse_mb,
             "baseline": duck_mb, "ratio": parse_mb / duck_mb, "target": "ours < 2048 MB"},
            {"bench": "parse_export", "metric": f"export peak RSS MB ({size})", "ours": max(export_mb, json_mb),
             "baseline": duck_mb, "ratio": max(export_mb, json_mb) / duck_mb, "target": "ours < 2048 MB"},
        ]
        return rows
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10 M samples (default: quick, ~300 k)")
    ap.add_argument("--samples", type=int, help="explicit number of process samples")
    ap.add_argument("--keep", action="store_true", help="keep the generated run folder")
    a = ap.parse_args()
    print_table(run(quick=not a.full, samples=a.samples, keep=a.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
