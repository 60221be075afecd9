"""Plots of the sim-vs-real comparison (matplotlib, Agg, PNG): Gantt per node (real above, simulated below),
cumulative completions, CPU per node. Times in seconds since each side's first submission."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tracekit.trace.intervals import assign_lanes  # noqa: E402
from tracekit.trace.opendc_results import SimTasks  # noqa: E402

GANTT, THROUGHPUT, CPU = "compare_gantt.png", "compare_throughput.png", "compare_cpu.png"
REAL_C, SIM_C = "tab:blue", "tab:orange"


def _lanes(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return np.array(assign_lanes(list(zip(starts.tolist(), ends.tolist()))), dtype=np.float64)


def gantt(path: Path, nodes: list[str], real: dict, sim: dict) -> None:
    """``real`` / ``sim``: row label -> (starts_s, ends_s); one panel per node, real lanes above simulated ones."""
    labels = list(dict.fromkeys(list(nodes) + list(sim)))
    fig, axes = plt.subplots(len(labels), 1, sharex=True, squeeze=False,
                             figsize=(12, max(2.5, 1.6 * len(labels) + 1)))
    for ax, lab in zip(axes[:, 0], labels):
        top = 0.0
        for what, colour, data in (("real", REAL_C, real.get(lab)), ("simulated", SIM_C, sim.get(lab))):
            if data is None or not len(data[0]):
                continue
            s, e = data
            lanes = _lanes(s, e)
            nl = int(lanes.max()) + 1 if lanes.size else 1
            y = -(top + lanes)
            lw = max(1.0, min(8.0, 60.0 / (nl + 1)))
            # one polyline per panel side, bars separated by NaN: 100 k bars draw in well under a second
            nan = np.full(len(s), np.nan)
            ax.plot(np.column_stack([s, np.maximum(e, s + 1e-3), nan]).ravel(),
                    np.column_stack([y, y, nan]).ravel(), color=colour, linewidth=lw, solid_capstyle="butt",
                    label=what)
            top += nl + 0.5
        ax.set_ylabel(lab, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    axes[0, 0].legend(handles=[plt.Line2D([], [], color=REAL_C, lw=4, label="real"),
                               plt.Line2D([], [], color=SIM_C, lw=4, label="simulated")], loc="upper right")
    axes[-1, 0].set_xlabel("time since first submission (s)")
    fig.suptitle("Tasks per node: real (blue, from placement/start to end) vs simulated (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def throughput(path: Path, real_end_s: np.ndarray, sim_end_s: np.ndarray, lag_s: float) -> None:
    """Cumulative completions, real and simulated (and the simulated curve shifted by the best lag)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for ends, colour, label in ((real_end_s, REAL_C, "real"), (sim_end_s, SIM_C, "simulated")):
        e = np.sort(ends)
        ax.step(np.r_[0.0, e], np.arange(len(e) + 1), where="post", color=colour, label=label)
    if lag_s:
        e = np.sort(sim_end_s) - lag_s
        ax.step(np.r_[0.0, e], np.arange(len(e) + 1), where="post", color=SIM_C, ls="--",
                label=f"simulated, shifted by the best lag ({-lag_s:+g} s)")
    ax.set_xlabel("time since first submission (s)")
    ax.set_ylabel("tasks completed")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cpu(path: Path, edges_s: np.ndarray, series: dict) -> None:
    """CPU (cores busy) per node, real and simulated, one panel per node."""
    nodes = list(series) or ["(no node)"]
    fig, axes = plt.subplots(len(nodes), 1, sharex=True, squeeze=False, figsize=(12, max(2.5, 2.2 * len(nodes))))
    mid = (edges_s[:-1] + edges_s[1:]) / 2 if len(edges_s) > 1 else np.zeros(0)
    for ax, n in zip(axes[:, 0], nodes):
        if n in series:
            r, s = series[n]
            ax.step(mid, r, where="mid", color=REAL_C, label="real")
            ax.step(mid, s, where="mid", color=SIM_C, label="simulated")
        ax.set_ylabel(f"{n}\ncores")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("time since first submission (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw(out: Path, inv: list[dict], sim: SimTasks, r0: float, s0: float, real_start_abs: np.ndarray,
         host_map: dict, lag_ms: float, real_end: np.ndarray, sim_end: np.ndarray, edges_cpu: np.ndarray,
         cpu_series: dict) -> list[Path]:
    """The three plots of a comparison into ``out``; returns their paths."""
    node_of = np.array([str(i["node_id"]) for i in inv], dtype=object)
    end_abs = np.array([float(i["ts_end"]) for i in inv])
    nodes = sorted(set(node_of.tolist()))
    real = {n: ((real_start_abs[node_of == n] - r0) / 1000, (end_abs[node_of == n] - r0) / 1000) for n in nodes}
    label_of_host = {h: n for n, h in host_map.items()}
    fin = sim.finished
    sim_rows: dict = {}
    for h, hname in enumerate(sim.hosts):
        sel = (sim.host == h) & fin
        if sel.any():
            lab = label_of_host.get(hname, f"sim {hname}")
            sim_rows[lab] = ((sim.schedule[sel] - s0) / 1000, (sim.finish[sel] - s0) / 1000)
    paths = [out / GANTT, out / THROUGHPUT, out / CPU]
    gantt(paths[0], nodes, real, sim_rows)
    throughput(paths[1], real_end / 1000, sim_end / 1000, lag_ms / 1000)
    cpu(paths[2], edges_cpu / 1000, cpu_series)
    return paths
