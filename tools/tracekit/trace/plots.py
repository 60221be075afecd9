"""Audit plots (matplotlib, Agg backend, PNG): Gantt per node, CPU utilisation per node, queue-wait distribution."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tracekit.trace import requests  # noqa: E402
from tracekit.trace.intervals import assign_lanes  # noqa: E402
from tracekit.trace.model import ParseResult  # noqa: E402

GANTT, UTIL, WAIT = "gantt.png", "cpu_utilisation.png", "queue_wait.png"
STATUS_HATCH = {"ok": None, "failed": "xx", "fenced": "//"}


def _t0(r: ParseResult) -> int:
    starts = [i["ts_start"] for i in r.executed()]
    enq = [i["ts_enqueue"] for i in r.invocations if i.get("ts_enqueue") is not None]
    return min(starts + enq) if (starts or enq) else 0


def _slot_start(inv: dict) -> int:
    """Where the task's slot starts in the Gantt: its placement (``ts_dispatch``) when known, else its exec."""
    d = inv.get("ts_dispatch")
    return d if d is not None and d <= inv["ts_start"] else inv["ts_start"]


RASTER_OVER = 3000  # tasks on one node beyond which its lanes are drawn as an image (bars below a pixel wide)
RASTER_PX = 1600


def gantt(result: ParseResult, path: Path) -> None:
    """Tasks per node, one lane per concurrently running task, coloured by profile; failed/fenced hatched.

    A node with more than ``RASTER_OVER`` tasks is drawn as an image of its lanes (one pixel column per
    1/``RASTER_PX`` of the run, coloured by the profile running there): the same picture, drawn in a fraction of
    the time, since such bars are narrower than a pixel anyway (its failed/fenced tasks are not hatched).
    """
    r = result
    runs = r.executed()
    t0 = _t0(r)
    profiles = sorted({str(i.get("profile")) for i in runs})
    cmap = plt.get_cmap("tab10")
    colour = {p: cmap(k % 10) for k, p in enumerate(profiles)}
    nodes = [n.node_id for n in r.nodes]
    by_node: dict[str, list[dict]] = {n: [] for n in nodes}
    for i in runs:
        by_node.setdefault(i["node_id"], []).append(i)
    lanes_of = {n: assign_lanes([(_slot_start(i), i["ts_end"]) for i in by_node[n]]) for n in nodes}
    lanes_total = sum((max(lanes_of[n]) if lanes_of[n] else 0) + 1 for n in nodes)
    span_s = max([(i["ts_end"] - t0) / 1000 for i in runs] or [1.0])
    y, yticks, ylabels = 0.0, [], []
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.35 * lanes_total + 0.6 * len(nodes) + 1.5)))
    for n in nodes:
        mine, lanes = by_node[n], lanes_of[n]
        nl = (max(lanes) + 1) if lanes else 1
        if len(mine) > RASTER_OVER:
            _gantt_image(ax, mine, lanes, nl, y, t0, span_s, profiles, colour)
        else:
            _gantt_bars(ax, mine, lanes, y, t0, colour)
        yticks.append(y + (nl - 1) / 2)
        ylabels.append(f"{n}\n({nl} lane{'s' if nl > 1 else ''})")
        y += nl + 0.6
    ax.set_ylim(y - 1.0, -0.6)  # inverted: the first lane on top
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    ax.set_yticks(yticks, ylabels)
    ax.set_xlabel("time since first enqueue / start (s)")
    ax.set_title(f"Tasks per node — {r.run_dir.name} ({len(runs)} executions)")
    handles = [Patch(facecolor=colour[p], edgecolor="black", label=p) for p in profiles]
    if any(_slot_start(i) < i["ts_start"] for i in runs):
        handles.append(Patch(facecolor="lightgrey", edgecolor="none", label="launch (dispatch to exec)"))
    handles += [Patch(facecolor="white", edgecolor="black", hatch=h, label=s) for s, h in STATUS_HATCH.items()
                if h and any(i.get("status") == s for i in runs)]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="profile")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gantt_bars(ax, mine: list[dict], lanes: list[int], y: float, t0: int, colour: dict) -> None:
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for inv, lane in zip(mine, lanes):  # one collection per (lane, profile, status)
        groups.setdefault((lane, str(inv.get("profile")), inv.get("status")), []).append(
            ((inv["ts_start"] - t0) / 1000, (inv["ts_end"] - inv["ts_start"]) / 1000))
    launch: dict[int, list[tuple[float, float]]] = {}  # lane -> (placement, launch overhead): a lighter segment
    for inv, lane in zip(mine, lanes):
        s0 = _slot_start(inv)
        if s0 < inv["ts_start"]:
            launch.setdefault(lane, []).append(((s0 - t0) / 1000, (inv["ts_start"] - s0) / 1000))
    for lane, xr in sorted(launch.items()):
        ax.broken_barh(xr, (y + lane - 0.4, 0.8), facecolors="lightgrey", edgecolor="none")
    for (lane, prof, status), xr in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        ax.broken_barh(xr, (y + lane - 0.4, 0.8), facecolors=colour[prof], edgecolor="black",
                       linewidth=0.4 if len(mine) < 2000 else 0.0, hatch=STATUS_HATCH.get(status))


def _gantt_image(ax, mine: list[dict], lanes: list[int], nl: int, y: float, t0: int, span_s: float,
                 profiles: list[str], colour: dict) -> None:
    from matplotlib.colors import ListedColormap

    index = {p: k + 1 for k, p in enumerate(profiles)}
    img = np.zeros((nl, RASTER_PX), dtype=np.int16)
    scale = RASTER_PX / span_s
    for inv, lane in zip(mine, lanes):  # a task covers at least the pixel it starts in
        a = int((inv["ts_start"] - t0) / 1000 * scale)
        b = max(a + 1, int(np.ceil((inv["ts_end"] - t0) / 1000 * scale)))
        img[lane, max(a, 0):b] = index[str(inv.get("profile"))]
    cmap = ListedColormap([(1, 1, 1, 0)] + [colour[p] for p in profiles])
    ax.imshow(img, cmap=cmap, vmin=0, vmax=len(profiles), aspect="auto", interpolation="nearest",
              extent=(0, span_s, y + nl - 0.5, y - 0.5))


def utilisation(result: ParseResult, path: Path) -> None:
    """CPU used by the traced tasks per node, as % of the node's cores, per time bin."""
    r = result
    fig, ax = plt.subplots(figsize=(12, 4))
    t0 = _t0(r)
    for n in r.nodes:
        bins = np.asarray(r.util.get(n.node_id, []), dtype=float)
        if not bins.size:
            continue
        cores = n.row().get("cpu_cores") or 1
        x = (r.util_t0 + (np.arange(bins.size) + 0.5) * r.util_bin_ms - t0) / 1000
        ax.step(x, 100.0 * bins / (r.util_bin_ms * cores), where="mid", label=f"{n.node_id} ({cores} cores)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"CPU of traced tasks\n(% of node, {r.util_bin_ms / 1000:g} s bins)")
    ax.set_ylim(bottom=0)
    ax.set_title("CPU utilisation per node")
    ax.grid(alpha=0.3)
    if r.nodes:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def queue_wait(result: ParseResult, path: Path) -> None:
    """Distribution of ts_start - ts_enqueue of successful tasks, per profile (stacked histogram)."""
    r = result
    by_prof: dict[str, list[float]] = {}
    for i in r.invocations:
        if i.get("status") == "ok" and i.get("ts_enqueue") is not None and i.get("ts_start") is not None:
            by_prof.setdefault(str(i.get("profile")), []).append((i["ts_start"] - i["ts_enqueue"]) / 1000)
    fig, ax = plt.subplots(figsize=(8, 4))
    allw = [w for ws in by_prof.values() for w in ws]
    if allw:
        names = sorted(by_prof)
        ax.hist([by_prof[p] for p in names], bins=min(40, max(5, len(allw) // 3)), stacked=True, label=names,
                edgecolor="black", linewidth=0.3)
        med, p95 = np.median(allw), np.percentile(allw, 95)
        ax.axvline(med, color="black", linestyle="--", linewidth=1, label=f"median {med:.2f} s")
        ax.axvline(p95, color="red", linestyle=":", linewidth=1, label=f"p95 {p95:.2f} s")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no successful task with ts_enqueue", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("queue wait: ts_start - ts_enqueue (s)")
    ax.set_ylabel("tasks")
    ax.set_title("Queue-wait distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(result: ParseResult, draw: bool = True) -> dict[str, str]:
    """Write the three PNGs next to the CTS files; returns {title: file name} for the report (only that when
    ``draw`` is False)."""
    r = result
    out = {"Gantt chart of tasks per node (colour = profile)": GANTT,
           "CPU utilisation per node over time": UTIL,
           "Queue-wait distribution": WAIT}
    if not draw:
        return {**out, **request_plot(r, draw=False)}
    gantt(r, r.out_dir / GANTT)
    utilisation(r, r.out_dir / UTIL)
    queue_wait(r, r.out_dir / WAIT)
    out.update(request_plot(r))
    return out


def request_plot(result: ParseResult, draw: bool = True) -> dict[str, str]:
    """A service run only: request latency and throughput over time beside the service's CPU (trace/requests.py)."""
    services = requests.read_cts(result.out_dir)
    if not services:
        return {}
    if draw:
        requests.plot(result, services, result.out_dir / requests.PLOT)
    return {"Requests: latency and throughput over time, beside the service's CPU": requests.PLOT}
