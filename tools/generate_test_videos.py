#!/usr/bin/env python3
"""Synthesise test input videos: H.264 yuv420p, ~8 Mbps, GOP 90; a third each without / low / medium noise.

A thin shim over ``tracekit.node.cli.generate_test_videos`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.node.cli import generate_test_videos

if __name__ == "__main__":
    generate_test_videos()
