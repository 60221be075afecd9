#!/usr/bin/env python3
"""Per-node /proc collector: `start` (daemon), `stop`, `run` (foreground). Settings come from the environment."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit import collector, paths
from tracekit.errors import run_cli

EPILOG = """environment (defaults in brackets):
  RUN_ID            run id [run_id.env]
  NODE_ID           node id [hostname]
  STAGE             free tag written to node.json, e.g. cloud [none]
  PROC_PID_DIR      sentinel folder; when set, only sentinels are sampled (whitelist) [logs/$RUN_ID/pids]
  PROC_INTERVAL_MS  sampling interval on absolute deadlines [200]
  PROC_MATCH        process-name regex sampled when PROC_PID_DIR is not set ['^ffmpeg$|^ffprobe$'; '' = off]
  USE_PY_COLLECT    1 = Python collector, 0 = shell fallback (same output) [1]
  TIME_SYNC         1 = best-effort NTP query at start, 0 = skip [1]; TIME_SYNC_STEP=1 also steps the clock
  NTP_POOL          NTP server for TIME_SYNC [pool.ntp.org]
  STOP_ALL          with `stop`: 1 = stop every collector of RUN_ID [0]
  TRACEKIT_REDIS_URL / TRACEKIT_REDIS_PASSWORD(_FILE)  controller Redis, for the clock offset (optional)
files: logs/$RUN_ID/<node>/{samples.jsonl,node.json,collector.pid,collector.log}, logs/$RUN_ID/timesync.log"""


def main() -> int:
    ap = argparse.ArgumentParser(prog="collect_sys.py", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("start", "stop", "run"),
                    help="start: daemonize; stop: stop this node's collector (STOP_ALL=1: all of the run); "
                         "run: sample in the foreground until Ctrl-C")
    args = ap.parse_args()
    if args.command == "stop":
        rid = paths.run_id()
        node = None if os.environ.get("STOP_ALL", "0") == "1" else paths.node_id()
        done = collector.stop_daemons(rid, node)
        if not done:
            print(f"no collector running for RUN_ID={rid}" + (f" node {node}" if node else ""))
        for n, pid, how in done:
            print(f"collector of node {n} (pid {pid}): {how}")
        return 0
    cfg = collector.CollectorConfig.from_env()
    if args.command == "run":
        return collector.run_foreground(cfg)
    use_py = os.environ.get("USE_PY_COLLECT", "1") != "0"
    pid = collector.start_daemon(cfg, use_py=use_py)
    print(f"collector started: pid {pid}, node {cfg.node_id}, mode {cfg.mode if use_py else 'sh-whitelist'}, "
          f"every {cfg.interval_ms:g} ms -> {paths.samples_path(cfg.run_id, cfg.node_id)}")
    return 0


if __name__ == "__main__":
    run_cli(main, "collect_sys.py")
