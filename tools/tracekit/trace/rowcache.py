"""The row cache of a CTS folder: a binary copy of ``proc_metrics.jsonl``'s variable values, written by the parse.

When every node was cut by the columnar reader, the parse also writes ``.proc_metrics.rows.npy`` (one ``ROW_DTYPE``
row per proc_metrics line, in file order) and ``.proc_metrics.rows.json`` (which rows belong to which task, and a
stamp of the CTS files it mirrors). Readers of CTS (``reader``) use it instead of parsing the JSON when it is fresh:
a changed ``proc_metrics.jsonl`` or ``invocations.jsonl`` (size, mtime, inode or a CRC of both ends) makes it stale,
and it is then ignored. It is never the only copy: deleting it loses nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROW_DTYPE = np.dtype([("ts_ms", "<i8"), ("dt_ms", "<i8"), ("cpu_us", "<i8"), ("rss_kb", "<i8"), ("rss_null", "?")])
ROWS_CACHE, ROWS_CACHE_META = ".proc_metrics.rows.npy", ".proc_metrics.rows.json"
VERSION = 1


def create_rows_cache(path: Path, nrows: int) -> int:
    """A .npy file of ``nrows`` ``ROW_DTYPE`` rows (filled by ``columnar.write_rows``); returns the byte offset of
    row 0."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=ROW_DTYPE, shape=(nrows,))
    offset = arr.offset
    del arr
    return offset


def _stamp(path: Path) -> list[int]:
    """Size, mtime, inode and a CRC of both ends: an edit (even within one mtime tick) changes it."""
    import zlib

    st = path.stat()
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        fh.seek(max(0, st.st_size - (1 << 16)))
        crc = zlib.crc32(fh.read(1 << 16), zlib.crc32(head))
    return [st.st_size, st.st_mtime_ns, st.st_ino, crc]


def write_rows_cache_meta(cts_dir: Path, blocks: list[list], files: list[Path]) -> None:
    """Finish the row cache: which rows belong to which task (``[node_id, trace_id, attempt, first row, rows]``
    in file order) and the size/mtime/inode of the CTS files it mirrors (a changed file invalidates it)."""
    import orjson

    meta = {"version": VERSION, "files": {f.name: _stamp(f) for f in files}, "blocks": blocks}
    tmp = cts_dir / (ROWS_CACHE_META + ".tmp")
    tmp.write_bytes(orjson.dumps(meta))
    os.replace(tmp, cts_dir / ROWS_CACHE_META)


def drop_rows_cache(cts_dir: Path) -> None:
    """Remove the row cache of a CTS folder (and any half-written one)."""
    for name in (ROWS_CACHE, ROWS_CACHE_META, ROWS_CACHE + ".tmp", ROWS_CACHE_META + ".tmp"):
        (cts_dir / name).unlink(missing_ok=True)


@dataclass
class RowsCache:
    """A fresh row cache: ``rows`` binary rows from byte ``offset`` of ``path``; ``blocks`` ``[node_id, trace_id,
    attempt, first row, rows]`` in file order; ``index``: task key -> (first row, rows)."""

    path: Path
    offset: int
    rows: int
    blocks: list[list]
    index: dict[tuple, tuple[int, int]]

    def read(self, first: int, count: int) -> np.ndarray:
        """Rows ``first`` .. ``first + count`` (read, not mapped: memory stays bounded by what is asked)."""
        return np.fromfile(self.path, dtype=ROW_DTYPE, count=count, offset=self.offset + first * ROW_DTYPE.itemsize)


def read_rows_cache(cts_dir: Path) -> RowsCache | None:
    """The row cache of a CTS folder when it still mirrors its files; None when absent or stale (then
    proc_metrics.jsonl is the source)."""
    import orjson

    try:
        meta = orjson.loads((cts_dir / ROWS_CACHE_META).read_bytes())
        if meta.get("version") != VERSION or any(_stamp(cts_dir / name) != stamp
                                                 for name, stamp in meta["files"].items()):
            return None
        rows = np.load(cts_dir / ROWS_CACHE, mmap_mode="r")  # header only: the rows are read on demand
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if rows.dtype != ROW_DTYPE:
        return None
    index = {(b[0], b[1], b[2]): (b[3], b[4]) for b in meta["blocks"]}
    if sum(n for _, n in index.values()) != len(rows):
        return None
    return RowsCache(cts_dir / ROWS_CACHE, rows.offset, len(rows), meta["blocks"], index)
