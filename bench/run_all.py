"""Run every benchmark under bench/ and print one table of ratios against their baselines.

Each ``bench/bench_*.py`` exposes ``run(quick: bool) -> list[dict]`` with rows
``{"bench", "metric", "ours", "baseline", "ratio", "target"}``. ``--full`` runs the long versions.
Registered by their file name: ``bench_cluster``, ``bench_collector``, ``bench_launch`` (placement to exec,
trivial-task throughput), ``bench_loadgen`` (load generator vs wrk), ``bench_parse_export``, ``bench_payload``
(µs per ``payload.check`` vs the previous implementation), ``bench_replay_compare`` (sim-vs-real compare, and the
replay when it exists, of 100 k tasks), ``bench_scheduler``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from pathlib import Path

from benchlib import print_table

HERE = Path(__file__).resolve().parent

def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="run the full-size benchmarks (slow)")
    ap.add_argument("--only", default="", help="substring filter on benchmark file names")
    args = ap.parse_args()
    rows, failed = [], []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only not in path.name:
            continue
        print(f"== {path.name}", file=sys.stderr, flush=True)
        try:
            rows += _load(path).run(quick=not args.full)
        except Exception as exc:  # a broken bench must not hide the others' numbers
            traceback.print_exc()
            failed.append(f"{path.name}: {exc}")
    print_table(rows)
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
