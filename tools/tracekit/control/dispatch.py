"""The dispatcher: build a reproducible task sequence from a profile mix and feed it to ``q:pending``.

Mix rounding (pure, :func:`mix_counts`): with weights w_i (sum W) and ``total`` tasks, profile i gets
floor(total * w_i / W) tasks, and the tasks still missing go one each to the largest fractional
remainders (ties: the order written in ``--mix``). The sequence is those tasks shuffled by
``random.Random(seed)``; the same seed gives the same sequence (``--seed 0`` included); without
``--seed`` a random seed is drawn and printed so the run can be repeated.

Feeding modes (:func:`feed`):
    default            everything at once
    --pending pulse    ``--pulse-size`` tasks every ``--pulse-interval`` s (the first pulse at once); within a pulse
                       the tasks are ``--pulse-spacing`` s apart (default 1 s, as the original Tracekit; 0 = the
                       whole pulse in one push, one ``ts_enqueue``)
    --pending fifo     keep q:pending at most ``--pending-max`` long: every ``--dribble-interval`` s push up
                       to ``--batch-size`` tasks while it is shorter
    --drip             every ``--dribble-interval`` s push ``--batch-size`` tasks when the backlog (tasks in
                       q:pending + every q:<node>, i.e. enqueued and not yet started) is below
                       ``--backlog-limit``; it waits instead of skipping, so every task is sent
Each push is one MULTI/EXEC (RPUSH + wake); every task gets ``ts_enqueue`` = Redis TIME (ms).
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tracekit.control import payload
from tracekit.control.profiles import get_profile, load_profiles
from tracekit.control.redis_retry import Retrier
from tracekit.control.task import Task, resolve_inside
from tracekit.core import paths
from tracekit.core.errors import EXIT_FAILURE, BadInput, BadTask, RedisUnavailable, UsageError
from tracekit.core.jsonl import append_line
from tracekit.core.keys import Keys

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".y4m", ".m4v")
DEFAULT_MIX = "fast1080p=1,medium480p=1,hevc1080p=1,light1c=1"


def parse_mix(text: str) -> list[tuple[str, float]]:
    """``"a=2,b=1"`` -> [("a", 2.0), ("b", 1.0)]; profile names checked, weights > 0."""
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, w = part.partition("=")
        name = name.strip()
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            raise UsageError(f"--mix: weight of {name!r} is not a number: {w!r}") from None
        if not math.isfinite(weight) or weight <= 0:
            raise UsageError(f"--mix: weight of {name!r} must be > 0")
        get_profile(name)
        if any(n == name for n, _ in out):
            raise UsageError(f"--mix: profile {name!r} given twice")
        out.append((name, weight))
    if not out:
        raise UsageError("--mix is empty: expected profile=weight,...")
    return out


def mix_counts(mix: list[tuple[str, float]], total: int) -> dict[str, int]:
    """Task counts per profile, proportional to the weights, largest-remainder rounding (sums to total)."""
    if total < 0:
        raise UsageError("--total must be >= 0")
    wsum = sum(w for _, w in mix)
    exact = [(name, total * w / wsum) for name, w in mix]
    counts = {name: int(math.floor(x)) for name, x in exact}
    missing = total - sum(counts.values())
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i][1] - math.floor(exact[i][1])), i))
    for i in order[:missing]:
        counts[exact[i][0]] += 1
    return counts


def sequence(mix: list[tuple[str, float]], total: int, seed: int) -> list[str]:
    """The profile of each task in enqueue order: the counts, shuffled by ``random.Random(seed)``."""
    counts = mix_counts(mix, total)
    seq = [name for name, _ in mix for _ in range(counts[name])]
    random.Random(seed).shuffle(seq)
    return seq


def list_inputs(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive), sorted by path."""
    if not folder.is_dir():
        raise BadInput(f"--inputs {folder} is not a directory", path=folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith("."))


def relative_to_root(root: Path, given: Path, what: str) -> Path:
    """``given`` as a path relative to ``root``; a clear error when it lies outside."""
    full = given.resolve() if given.is_absolute() else (Path.cwd() / given).resolve()
    try:
        return full.relative_to(root)
    except ValueError:
        env = "TRACEKIT_INPUTS" if what == "inputs" else "TRACEKIT_OUTPUTS"
        raise UsageError(f"--{what} {given} is outside the {what} root {root} (set ${env})") from None


@dataclass
class Plan:
    """The tasks to enqueue (payload dicts without ts_enqueue) and the seed that produced them."""

    tasks: list
    seed: int


def plan(run_id: str, mix_text: str, total: int | None, seed: int | None, inputs: Path, outputs: Path | None,
         alloc: Callable[[int], int] = lambda n: 1) -> Plan:
    """Build the payloads: trace ids ``t<seq>``, profiles from the mix, inputs round-robin over a seeded shuffle."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    mix = parse_mix(mix_text or DEFAULT_MIX)
    in_root, out_root = paths.inputs_root(), paths.outputs_root()
    needs_input = any(get_profile(n)["needs_input"] for n, _ in mix)
    files: list[Path] = []
    if needs_input:
        rel = relative_to_root(in_root, inputs, "inputs")
        files = list_inputs(in_root / rel)
        if not files:
            raise BadInput(f"no input videos ({', '.join(VIDEO_SUFFIXES)}) under {inputs}", path=inputs)
    if total is None:
        total = len(files) if files else 10
    out_rel = relative_to_root(out_root, outputs, "outputs") if outputs else Path()
    first_seq = alloc(total)  # trace ids stay unique when several dispatchers feed one run
    rng = random.Random(seed)
    files = sorted(files)
    rng.shuffle(files)
    tasks = []
    for i, name in enumerate(sequence(mix, total, seed)):
        prof = load_profiles()[name]
        tid = f"t{first_seq + i:06d}"
        # seq = the run-wide counter (not this plan's index): dispatch.jsonl stays ordered across dispatchers
        d = {"seq": first_seq + i, "trace_id": tid, "profile": name, "cpu_units": prof["cpu_units"], "attempt": 1,
             "output": str(out_rel / run_id / f"{tid}_{name}.mp4")}
        if prof["needs_input"]:
            src = files[i % len(files)]
            resolve_inside(in_root, str(src.relative_to(in_root)), "input")
            d["input"] = str(src.relative_to(in_root))
        tasks.append(d)
    return Plan(tasks, seed)


LEGACY_PROFILE = "legacy720p"  # the original's task without --mix: scale/preset/crf only, no thread flags


def legacy_params(scale: str | None, preset: str | None, crf: int | None) -> dict:
    """The original dispatcher's ``--scale W:H --preset P --crf N`` as task params (checked, one-line errors)."""
    from tracekit.control.profiles import PRESETS
    from tracekit.control.task import SCALE_RE

    out: dict = {}
    if scale is not None:
        norm = scale.replace(":", "x")
        if not SCALE_RE.match(norm):
            raise UsageError(f"--scale must look like 1280:720, got {scale!r}")
        out["scale"] = norm
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        out["preset"] = preset
    if crf is not None:
        if not 0 <= crf <= 51:
            raise UsageError(f"--crf must be in 0..51, got {crf}")
        out["crf"] = crf
    return out


def per_file_plan(run_id: str, inputs: Path, outputs: Path | None, params: dict, seed: int | None,
                  alloc: Callable[[int], int] = lambda n: 1) -> Plan:
    """The original dispatcher without ``--mix``: one ``legacy720p`` task per input file, in file-name order,
    with ``params`` (from ``--scale/--preset/--crf``) on every task."""
    p = plan(run_id, f"{LEGACY_PROFILE}=1", None, seed, inputs, outputs, alloc)
    for t, name in zip(p.tasks, sorted(t["input"] for t in p.tasks)):
        t["input"] = name
        if params:
            t["params"] = dict(params)
    return p


@dataclass
class FeedConfig:
    """How to feed q:pending (see the module docstring)."""

    mode: str = "all"  # all | pulse | fifo | drip
    pulse_size: int = 10
    pulse_interval: float = 300.0
    pulse_spacing: float = 1.0  # seconds between the tasks of one pulse (the original's); 0 = one push per pulse
    pending_max: int = 6
    batch_size: int = 1
    dribble_interval: float = 1.0
    backlog_limit: int = 1


def redis_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def push(client: redis.Redis, keys: Keys, run_id: str, batch: list[dict], first_seq: int) -> None:
    """Stamp ``ts_enqueue`` (Redis TIME) and RPUSH a batch + wake in one transaction; log dispatch.jsonl."""
    now = redis_ms(client)
    raws = []
    for d in batch:
        d["ts_enqueue"] = now
        raws.append(Task(**{k: d.get(k) for k in ("trace_id", "profile", "cpu_units", "ts_enqueue", "attempt",
                                                     "input", "output")}, params=d.get("params") or {}).to_json())
    check_batch(client, keys, raws)
    pipe = client.pipeline(transaction=True)
    pipe.rpush(keys.pending, *raws)
    pipe.lpush(keys.wake, "1")
    pipe.ltrim(keys.wake, 0, 0)
    pipe.execute()
    for i, d in enumerate(batch):
        append_line(paths.dispatch_path(run_id), {"seq": d.get("seq", first_seq + i), "trace_id": d["trace_id"],
                                                  "profile": d["profile"], "cpu_units": d["cpu_units"],
                                                  "ts_enqueue": now, "input": d.get("input"),
                                                  "output": d.get("output")})


def check_batch(client: redis.Redis, keys: Keys, raws: list[str]) -> None:
    """Refuse (:class:`BadTask`, nothing pushed) a batch holding a payload the gate refuses or a trace_id used
    twice: in the batch, or already in this run (placed, recorded done/failed: e.g. the ``seq`` counter was reset
    while the run's records stayed). The scheduler refuses the duplicates that still slip through."""
    tids = []
    for raw in raws:
        try:
            tids.append(payload.check(raw).trace_id)
        except payload.InvalidPayload as exc:
            raise BadTask(f"refusing to enqueue a bad payload: {exc}", trace_id=exc.trace_id) from None
    twice = sorted(t for t, n in Counter(tids).items() if n > 1)
    if twice:
        raise BadTask(f"refusing to enqueue trace_id {twice[0]} twice in one batch", trace_id=twice[0])
    pipe = client.pipeline(transaction=False)
    for h in (keys.trace_ids, keys.done, keys.failed):
        pipe.hmget(h, tids)
    used = [t for t, *hits in zip(tids, *pipe.execute()) if any(hits)]
    if used:
        raise BadTask(f"refusing to enqueue trace_id {used[0]}: already used in this run ({len(used)} of the "
                      f"batch are; was the seq counter reset?)", trace_id=used[0])


def backlog(client: redis.Redis, keys: Keys) -> int:
    """Tasks enqueued and not yet started: q:pending plus every registered node's q:<node>."""
    nodes = client.zrange(keys.nodes, 0, -1)
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.pending)
    for n in nodes:
        pipe.llen(keys.queue(n))
    return sum(pipe.execute())


def batches(cfg: FeedConfig, client: redis.Redis, keys: Keys, n_left: int, stop: threading.Event) -> Iterator[int]:
    """Yield how many tasks to push next, sleeping as the mode says."""
    first = True
    in_pulse = 0  # tasks pushed in the current pulse (spaced pulses push one at a time)
    while n_left > 0 and not stop.is_set():
        if cfg.mode == "all":
            k = n_left
        elif cfg.mode == "pulse" and cfg.pulse_spacing > 0:
            if not first:
                wait = cfg.pulse_interval if in_pulse >= cfg.pulse_size else cfg.pulse_spacing
                in_pulse = 0 if in_pulse >= cfg.pulse_size else in_pulse
                if stop.wait(wait):
                    return
            k = 1
            in_pulse += 1
        elif cfg.mode == "pulse":
            if not first and stop.wait(cfg.pulse_interval):
                return
            k = min(cfg.pulse_size, n_left)
        else:
            if not first and stop.wait(cfg.dribble_interval):
                return
            if cfg.mode == "fifo":
                k = min(cfg.batch_size, n_left, max(0, cfg.pending_max - client.llen(keys.pending)))
            else:  # drip
                k = min(cfg.batch_size, n_left) if backlog(client, keys) < cfg.backlog_limit else 0
        first = False
        if k > 0:
            n_left -= k
            yield k


def wait_all(client: redis.Redis, keys: Keys, trace_ids: list[str], stop: threading.Event,
             progress_bar) -> tuple[dict, dict]:
    """Block until every trace id has a done or failed record; wakes on the events stream (no polling).
    Survives a Redis outage (retries with backoff: everything here is a read)."""
    state = {"last": "$"}
    remaining = set(trace_ids)
    done: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    retry = Retrier(logging.getLogger("dispatcher"), stop)
    while remaining and not stop.is_set():
        retry(lambda: _wait_round(client, keys, remaining, done, failed, progress_bar, state), "wait")
    return done, failed


def _wait_round(client: redis.Redis, keys: Keys, remaining: set, done: dict, failed: dict, bar, state: dict) -> None:
    """One round: count finished tasks, then block up to 1 s on the events stream."""
    chunk = sorted(remaining)
    for i in range(0, len(chunk), 1000):
        part = chunk[i:i + 1000]
        pipe = client.pipeline(transaction=False)
        pipe.hmget(keys.done, part)
        pipe.hmget(keys.failed, part)
        d, f = pipe.execute()
        for tid, rd, rf in zip(part, d, f):
            if rd or rf:
                remaining.discard(tid)
                (done if rd else failed)[tid] = json.loads(rd or rf)
    if bar is not None:
        bar.n = len(done) + len(failed)
        bar.set_postfix(done=len(done), failed=len(failed))
        bar.refresh()
    if not remaining:
        return
    res = client.xread({keys.events: state["last"]}, block=1000, count=1000)
    if res:
        state["last"] = res[0][1][-1][0]


def summary(plan_tasks: list[dict], done: dict, failed: dict) -> tuple[str, int]:
    """A one-paragraph summary and the exit code (1 when a task failed or is unaccounted for)."""
    ts_enq = [d["ts_enqueue"] for d in plan_tasks if "ts_enqueue" in d]
    ends = [r.get("ts_done") for r in list(done.values()) + list(failed.values()) if r.get("ts_done")]
    makespan = (max(ends) - min(ts_enq)) / 1000 if ends and ts_enq else float("nan")
    missing = len(plan_tasks) - len(done) - len(failed)
    text = (f"done {len(done)} / failed {len(failed)} / unfinished {missing} of {len(plan_tasks)}; "
            f"makespan {makespan:.3f} s")
    reasons = sorted({str(r.get("reason"))[:120] for r in failed.values()})
    if reasons:
        text += "\nfailure reasons: " + "; ".join(reasons[:5])
    return text, (EXIT_FAILURE if failed or missing else 0)


def dispatch(client: redis.Redis, keys: Keys, run_id: str, the_plan: Plan, cfg: FeedConfig, wait: bool,
             progress: bool = True) -> int:
    """Enqueue the plan with the chosen mode, optionally wait for every task; prints a summary."""
    from tqdm import tqdm

    stop = threading.Event()
    tasks = the_plan.tasks
    print(f"dispatcher: run {run_id}, {len(tasks)} task(s), seed {the_plan.seed}, mode {cfg.mode}", file=sys.stderr)
    bar = tqdm(total=len(tasks), desc="enqueued", unit="task", disable=not progress, file=sys.stderr)
    pos = 0
    t0 = time.monotonic()
    try:
        for k in batches(cfg, client, keys, len(tasks), stop):
            push(client, keys, run_id, tasks[pos:pos + k], pos)
            pos += k
            bar.update(k)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"lost Redis after enqueuing {pos} of {len(tasks)} task(s) "
                               f"(see {paths.dispatch_path(run_id)}): {exc}") from None
    finally:
        bar.close()
    print(f"dispatcher: enqueued {pos} task(s) in {time.monotonic() - t0:.2f} s", file=sys.stderr)
    if not wait:
        return 0
    wbar = tqdm(total=len(tasks), desc="finished", unit="task", disable=not progress, file=sys.stderr)
    try:
        done, failed = wait_all(client, keys, [t["trace_id"] for t in tasks], stop, wbar)
    finally:
        wbar.close()
    text, code = summary(tasks, done, failed)
    print(text)
    return code
