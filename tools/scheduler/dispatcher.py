#!/usr/bin/env python3
"""Dispatcher: build a task mix (reproducible with --seed) and enqueue it on q:pending for the central scheduler.

Modes: default = everything at once; --pending with --pending-mode pulse|fifo; --drip. --wait follows the run to
its end and prints done / failed / makespan (exit 1 when a task failed).

A thin shim over ``tracekit.control.cli.dispatcher`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.control.cli import dispatcher

if __name__ == "__main__":
    dispatcher()
