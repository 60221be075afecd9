"""``python -m tracekit <command> [args]``: every command of the toolkit under one name.

The same table as ``[project.scripts]`` in pyproject.toml (``tracekit-<command>``); a test keeps them equal.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "dispatch": "tracekit.control.cli:dispatcher",
    "scheduler": "tracekit.control.cli:scheduler_central",
    "worker": "tracekit.control.cli:worker",
    "status": "tracekit.control.cli:show_status",
    "admin": "tracekit.control.cli:administer",
    "loadgen": "tracekit.control.cli:loadgen",
    "collect": "tracekit.node.cli:collect_sys",
    "videos": "tracekit.node.cli:generate_test_videos",
    "ffmpeg-wrapper": "tracekit.node.cli:ffmpeg_wrapper",
    "cmd-wrapper": "tracekit.node.cli:cmd_wrapper",
    "parse": "tracekit.trace.cli:parse_cts",
    "import-original": "tracekit.trace.cli:import_original",
    "export-opendc": "tracekit.trace.cli:export_opendc",
    "filter-topn": "tracekit.trace.cli:filter_opendc_topn",
    "export-perfetto": "tracekit.trace.cli:export_perfetto",
    "replay-opendc": "tracekit.trace.cli:replay_opendc",
    "compare-opendc": "tracekit.trace.cli:compare_opendc",
    "demo": "tracekit.cluster.cli:demo",
    "chaos": "tracekit.cluster.cli:chaos",
    "setup": "tracekit.cluster.cli:setup",
}


def main() -> None:
    """Run ``COMMANDS[argv[1]]`` with the remaining arguments."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: python -m tracekit <command> [args]\ncommands: {names}", file=sys.stderr)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    name = sys.argv.pop(1)
    sys.argv[0] = f"tracekit-{name}"
    module, _, func = COMMANDS[name].partition(":")
    getattr(importlib.import_module(module), func)()


if __name__ == "__main__":
    main()
