#!/usr/bin/env python3
"""Synthesise test input videos: H.264 yuv420p, ~8 Mbps, GOP 90; a third each without / low / medium noise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit import paths
from tracekit.errors import run_cli
from tracekit.videos import generate


def main() -> int:
    ap = argparse.ArgumentParser(prog="generate_test_videos.py", description=__doc__)
    ap.add_argument("--count", type=int, default=6, help="number of clips (default 6)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per clip (default 10)")
    ap.add_argument("--resolution", default="1920x1080", help="WIDTHxHEIGHT (default 1920x1080)")
    ap.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    ap.add_argument("--seed", type=int, default=20250901, help="seed: same seed, same bytes (default 20250901)")
    ap.add_argument("--bitrate", default="8M", help="target bitrate, e.g. 8M or 300k (default 8M)")
    ap.add_argument("--gop", type=int, default=90, help="keyframe interval in frames (default 90)")
    ap.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    ap.add_argument("--out", default=None, help="output folder (default <inputs root>/ffmpeg)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny clips for tests: 320x240, 1 s, 300k, preset ultrafast (explicit flags still win)")
    ap.add_argument("--jobs", type=int, default=None, help="clips encoded at a time (default: CPU count)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in argv}
        if "--resolution" not in given:
            args.resolution = "320x240"
        if "--duration" not in given:
            args.duration = 1.0
        if "--bitrate" not in given:
            args.bitrate = "300k"
        if "--preset" not in given:
            args.preset = "ultrafast"
    out = Path(args.out) if args.out else paths.inputs_root() / "ffmpeg"
    files = generate(args.count, args.duration, args.resolution, args.fps, args.seed, out, args.bitrate, args.gop,
                     args.preset, progress=not args.no_progress, jobs=args.jobs)
    print(f"{len(files)} clips ({args.resolution}, {args.duration:g}s, {args.fps} fps, seed {args.seed}) in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, "generate_test_videos.py")
