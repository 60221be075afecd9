"""Raw logs of a run -> CTS (docs/traces.md): ``invocations.jsonl``, ``proc_metrics.jsonl``, ``nodes.json``.

The parse: events are read whole (``events``); samples are cut node by node (nodes in parallel processes) in two
passes. Pass 1 reads a node's samples and cuts each task into rows when it ends, keeping only the samples of running
tasks in memory: the columnar reader (``columnar``: DuckDB + numpy, binary rows) for every well-formed file, the
streaming reader (``streaming``: orjson line by line, text rows) for any file the columnar one cannot read exactly;
both give the same bytes. Pass 2 (``assemble``) puts every task's block of rows in its place in the final file.

Order (deterministic, byte-identical on re-runs): invocations by ``invocation_order_key``; proc_metrics grouped
by task in the same order, each task's rows by time. The CTS reader (``reader``) and the OpenDC export rely on this
grouping.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tracekit.core.errors import BadRunFolder, Unsupported
from tracekit.core.jsonl import dumps
from tracekit.trace import columnar, rowcache
from tracekit.trace.events import load_controller, load_events
from tracekit.trace.model import Block, NodeInfo, ParseResult, Task, discover_nodes, load_node, matched_order_key
from tracekit.trace.streaming import NodeCut
from tracekit.trace.vocabulary import (
    INVOCATIONS,
    NODES,
    PROC_METRICS,
    PROCESSES,
    invocation_order_key,
    no_cyclic_gc,
    task_key,
)

COLUMNAR = True  # cut well-formed samples files with the columnar reader (tests switch it off to compare)
WORKER_DIED = "a parse worker process died (out of memory?): re-run, or free memory"

# ---- parse_run ----


def parse_run(run_dir: str | Path, out_dir: str | Path | None = None, progress: bool = False) -> ParseResult:
    """Parse (and merge) every node of ``run_dir`` into CTS files under ``out_dir`` (default ``run_dir/CTS``).

    Samples are cut by the columnar reader, or by the streaming one for a file the columnar reader cannot read
    exactly (``ParseResult.reader_notes`` says which); nodes in parallel processes.
    """
    with no_cyclic_gc():
        return _parse_run(Path(run_dir), Path(out_dir) if out_dir else Path(run_dir) / "CTS", progress)


def _parse_run(run_dir: Path, out: Path, progress: bool) -> ParseResult:
    r = start_parse(run_dir, out)
    tasks = load_events(r)

    def finish_invocations() -> None:
        load_controller(r)
        r.invocations.sort(key=invocation_order_key)

    out.mkdir(parents=True, exist_ok=True)
    rowcache.drop_rows_cache(out)  # a re-parse never leaves the previous run's cache behind
    scratch_dir = out / ".parse-scratch"
    shutil.rmtree(scratch_dir, ignore_errors=True)
    scratch_dir.mkdir()
    final_tmp = out / (PROC_METRICS + ".tmp")
    try:  # the controller's files are read while the node workers cut (the cut does not need them)
        index = cut_samples(r, tasks, scratch_dir, progress, meanwhile=finish_invocations)
        cached = assemble(r.invocations, index, final_tmp, meanwhile=lambda: write_small_files(r, out))
        os.replace(final_tmp, out / PROC_METRICS)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
        final_tmp.unlink(missing_ok=True)
    if cached is not None:  # the row cache mirrors these two files exactly: readers of CTS may read it instead
        os.replace(out / (rowcache.ROWS_CACHE + ".tmp"), out / rowcache.ROWS_CACHE)
        rowcache.write_rows_cache_meta(out, cached, [out / PROC_METRICS, out / INVOCATIONS])
    return r


def start_parse(run_dir: Path, out_dir: Path) -> ParseResult:
    """The result of a parse about to start: the run's nodes with their metadata (no event read yet)."""
    node_ids = discover_nodes(run_dir)
    if not node_ids:
        raise BadRunFolder(f"{run_dir}: no node folders with raw logs (events.jsonl, samples.jsonl, node.json)",
                           path=run_dir)
    r = ParseResult(run_dir=run_dir, out_dir=out_dir)
    r.nodes = [load_node(run_dir, n, r.bad) for n in node_ids]
    return r


def write_small_files(result: ParseResult, out_dir: Path) -> None:
    """invocations.jsonl and nodes.json (final once the invocations are merged and sorted)."""
    _atomic_write(out_dir / INVOCATIONS, "".join(dumps(inv) + "\n" for inv in result.invocations))
    _atomic_write(out_dir / NODES, json.dumps([n.row() for n in result.nodes], indent=1, ensure_ascii=False) + "\n")
    # matched processes: always written (empty without any), so a CTS folder has the same files every run
    _atomic_write(out_dir / PROCESSES, "".join(dumps(m.row()) + "\n"
                                               for m in sorted(result.matched.values(), key=matched_order_key)))


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# ---- pass 1: the nodes' samples ----


def cut_samples(result: ParseResult, tasks: dict[str, list[Task]], scratch_dir: Path, progress: bool = False,
                meanwhile: Callable[[], None] | None = None) -> dict[tuple, Block]:
    """Cut every node's samples (nodes in parallel processes when there are several cores) into ``result``.

    ``tasks``: node -> its executed attempts (``events.load_events``). ``meanwhile`` (optional, called exactly
    once) is work for this process while the node workers run (the cut needs only the executed tasks, not the
    controller's files). Returns task_key -> the ``Block`` of the task's rows.
    """
    r = result
    nbins = r.set_utilisation_grid(tasks)
    workers = min(len(r.nodes), os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))  # DuckDB threads per node being cut
    jobs = [_NodeJob(r.run_dir, r.out_dir, node, tasks.get(node.node_id, []), r.util_bin_ms, r.util_t0, nbins,
                     threads, scratch_dir / f"{k}.rows", progress) for k, node in enumerate(r.nodes)]
    results = None
    pending = [meanwhile] if meanwhile else []
    if workers > 1:
        try:
            results = _cut_parallel(jobs, workers, pending, progress)
        except (OSError, NotImplementedError, ImportError):
            results = None  # no process pool here (e.g. no /dev/shm semaphores): same result, one process
    while pending:
        pending.pop()()
    if results is None:
        results = [job.run() for job in jobs]
    index: dict[tuple, Block] = {}
    for part, idx in results:
        r.merge(part)
        index.update(idx)
    return index


class _NodeJob:
    """Pass 1 of one node (a separate process when nodes run in parallel): rows into its own scratch file."""

    def __init__(self, run_dir: Path, out_dir: Path, node: NodeInfo, tasks: list[Task], bin_ms: int, t0: int,
                 nbins: int, threads: int, scratch_path: Path, progress: bool) -> None:
        self.run_dir, self.out_dir, self.node, self.tasks = run_dir, out_dir, node, tasks
        self.bin_ms, self.t0, self.nbins, self.threads = bin_ms, t0, nbins, threads
        self.scratch_path, self.progress = scratch_path, progress

    def _node_cut(self) -> NodeCut:
        return NodeCut(self.run_dir, self.out_dir, self.node, self.bin_ms, self.t0, self.nbins, self.progress)

    def run(self) -> tuple[ParseResult, dict[tuple, Block]]:
        samples = self.run_dir / self.node.node_id / "samples.jsonl"
        with open(self.scratch_path, "wb") as scratch, no_cyclic_gc():
            fallback = None
            if samples.exists() and COLUMNAR and columnar.available():
                cut = self._node_cut()
                try:
                    with open(self.scratch_path.with_suffix(".cols"), "wb") as cols:
                        columnar.cut_node(cut, self.tasks, samples, scratch, cols, self.threads)
                    return cut.result, cut.index
                except columnar.NeedsStreaming as why:  # the reference reads it (and reports its bad lines)
                    fallback = f"{samples}: streaming reader used ({why})"
                scratch.seek(0)
                scratch.truncate()
                for t in self.tasks:
                    t.reset()
            cut = self._node_cut()
            cut.cut_file(self.tasks, scratch)
            if fallback:
                cut.result.reader_notes.append(fallback)
        return cut.result, cut.index


_FORK_JOBS: list[_NodeJob] | None = None  # the jobs of _cut_parallel, inherited by forked workers


def _cut_forked_job(k: int) -> tuple[ParseResult, dict[tuple, Block]]:
    """Node job ``k`` in a forked worker (the job list came with the fork, not through a pipe)."""
    assert _FORK_JOBS is not None
    return _FORK_JOBS[k].run()


def _run_job(job: _NodeJob) -> tuple[ParseResult, dict[tuple, Block]]:
    return job.run()


def _cut_parallel(jobs: list[_NodeJob], workers: int, pending: list[Callable[[], None]],
                  progress: bool) -> list[tuple[ParseResult, dict[tuple, Block]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    global _FORK_JOBS
    # With fork the workers inherit the jobs (the node's tasks: tens of MB at 100 k tasks) instead of
    # unpickling them, which cost about a second per worker.
    fork = "fork" in multiprocessing.get_all_start_methods()
    _FORK_JOBS = jobs if fork else None
    try:
        with ProcessPoolExecutor(max_workers=workers,
                                 mp_context=multiprocessing.get_context("fork") if fork else None) as pool:
            futs = [pool.submit(_cut_forked_job, k) if fork else pool.submit(_run_job, job)
                    for k, job in enumerate(jobs)]
            while pending:  # this process's own work, while the workers cut
                pending.pop()()
            with tqdm(total=len(futs), desc="parse nodes", unit="node", disable=not progress) as bar:
                for f in futs:
                    f.add_done_callback(lambda _f: bar.update(1))
                return [f.result() for f in futs]  # node order: deterministic merge
    except BrokenProcessPool:
        raise Unsupported(WORKER_DIED) from None
    finally:
        _FORK_JOBS = None


# ---- pass 2: assemble ----


def assemble(invocations: list[dict], index: dict[tuple, Block], final_tmp: Path,
             meanwhile: Callable[[], None] | None = None) -> list[list] | None:
    """Pass 2: put each task's block of rows in its place in the final file, in the invocation order.

    Every block's place is known from the block lengths. Text blocks are copied by the kernel
    (``os.copy_file_range``, which releases the GIL; ``pread``/``pwrite`` where it cannot) in contiguous ranges by
    one thread per core; binary row blocks are formatted and written in place by one process per scratch file.
    When every block is binary they also fill the row cache (``rowcache.ROWS_CACHE``) next to the final file,
    and the cache's block list is returned (else None). ``meanwhile`` (optional) runs here while they work.
    """
    text: list[tuple[Path, int, int, int]] = []  # (scratch file, offset there, length, offset in the final file)
    rows: dict[Path, list] = {}  # columnar scratch file -> (first row, rows, length, final offset, inv, final row)
    cached: list[list] = []
    size = nrows = 0
    for inv in invocations:
        blk = index.get(task_key(inv["node_id"], inv["trace_id"], inv["attempt"]))
        if blk is None or blk.nbytes <= 0:
            continue
        if blk.rows < 0:
            text.append((blk.path, blk.offset, blk.nbytes, size))
        else:
            rows.setdefault(blk.path, []).append((blk.offset, blk.rows, blk.nbytes, size, inv, nrows))
            cached.append([inv["node_id"], inv["trace_id"], inv["attempt"], nrows, blk.rows])
            nrows += blk.rows
        size += blk.nbytes
    with open(final_tmp, "wb") as fh:
        fh.truncate(size)
    cache = None
    if rows and not text:
        path = final_tmp.with_name(rowcache.ROWS_CACHE + ".tmp")
        cache = (path, rowcache.create_rows_cache(path, nrows))
    jobs = [(path, blocks, final_tmp, cache) for path, blocks in rows.items()]
    workers = min(len(jobs), os.cpu_count() or 1)
    pool = _fork_pool(workers) if workers > 1 else None
    global _ASSEMBLE_JOBS
    _ASSEMBLE_JOBS = jobs  # set before the first submit forks the workers
    with pool or contextlib.nullcontext():
        try:
            futs = [pool.submit(_write_rows_job, k) for k in range(len(jobs))] if pool else []
            if meanwhile:
                meanwhile()
            _copy_text(text, size, final_tmp)
            if not pool:
                for k in range(len(jobs)):
                    _write_rows_job(k)
            for f in futs:
                f.result()
        except BrokenProcessPool:
            raise Unsupported(WORKER_DIED) from None
        finally:
            _ASSEMBLE_JOBS = None
    return cached if cache else None


_ASSEMBLE_JOBS: list | None = None  # the pass-2 jobs of assemble, inherited by forked workers


def _write_rows_job(k: int) -> None:
    assert _ASSEMBLE_JOBS is not None
    columnar.write_rows(*_ASSEMBLE_JOBS[k])


def _fork_pool(workers: int):
    """A process pool whose workers are forked (they inherit the jobs), or None where that is not possible."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    except (OSError, NotImplementedError, ImportError):
        return None


def _copy_text(plan: list[tuple[Path, int, int, int]], size: int, final_tmp: Path) -> None:
    """Copy text blocks ``(src, src offset, length, dst offset)`` into the final file, one thread per range."""
    parts = min(os.cpu_count() or 1, 4) if size > 64 << 20 else 1
    starts = [b[3] for b in plan]
    bounds = [0] + [bisect.bisect_left(starts, size * k // parts) for k in range(1, parts)] + [len(plan)]
    ranges = [plan[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    if len(ranges) <= 1:
        for blocks in ranges:
            _copy_range(blocks, final_tmp)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        for f in [pool.submit(_copy_range, blocks, final_tmp) for blocks in ranges]:
            f.result()


def _copy_range(blocks: list[tuple[Path, int, int, int]], final_tmp: Path) -> None:
    """Copy blocks ``(src, src offset, length, dst offset)`` into the (pre-sized) final file."""
    files: dict[Path, int] = {}
    kernel_copy = hasattr(os, "copy_file_range")
    out = os.open(final_tmp, os.O_WRONLY)
    try:
        for path, off, left, dst in blocks:
            src = files.get(path)
            if src is None:
                src = files[path] = os.open(path, os.O_RDONLY)
            while left > 0 and kernel_copy:
                try:
                    n = os.copy_file_range(src, out, left, off, dst)
                except OSError:
                    n = 0
                if n <= 0:
                    kernel_copy = False  # not supported here (or nothing copied): plain reads from now on
                    break
                off, dst, left = off + n, dst + n, left - n
            while left > 0:
                data = os.pread(src, min(left, 1 << 24), off)
                if not data:
                    raise Unsupported(f"scratch file {path} is shorter than expected (disk full?)")
                n = os.pwrite(out, data, dst)
                off, dst, left = off + n, dst + n, left - n
    finally:
        os.close(out)
        for fd in files.values():
            os.close(fd)
