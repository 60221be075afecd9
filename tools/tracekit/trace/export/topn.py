"""Keep the earliest N tasks of an exported OpenDC trace (what the original Tracekit's
``tools/filter_opendc_topn.py`` did), for quick simulations of a long run's beginning.

``filter_topn(input_dir, out_dir, topn)``: the ``topn`` tasks with the smallest ``submission_time`` (ties in file
order) and exactly their fragments, both in their original file order and with the same arrow schemas (OpenDC reads
types strictly, see ``export.opendc``); ``topology.json``, ``small_datacenter.json`` and ``experiment.json`` are
copied when present, so the folder runs as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracekit.core.errors import BadInput, UsageError
from tracekit.trace.export.opendc import EXPERIMENT, FRAGMENTS, SMALL_DATACENTER, TASKS, TOPOLOGY


def filter_topn(input_dir: str | Path, out_dir: str | Path, topn: int) -> tuple[int, int, int, int]:
    """Write the filtered trace; returns (tasks kept, tasks in, fragments kept, fragments in)."""
    if topn < 0:
        raise UsageError("--topn must be >= 0")
    inp, out = Path(input_dir), Path(out_dir)
    if not (inp / TASKS).is_file() or not (inp / FRAGMENTS).is_file():
        raise BadInput(f"{inp}: no {TASKS} and {FRAGMENTS} (an export_opendc.py output folder)", path=inp)
    if inp.resolve() == out.resolve():
        raise UsageError("--output must differ from --input")
    tasks = pq.read_table(inp / TASKS)
    frags = pq.read_table(inp / FRAGMENTS)
    order = np.argsort(tasks["submission_time"].to_numpy(), kind="stable")[:topn]
    keep_rows = np.sort(order)  # file order
    kept = tasks.take(pa.array(keep_rows, pa.int64()))
    mask = pc.is_in(frags["id"], value_set=kept["id"])
    kept_frags = frags.filter(mask)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(kept, out / TASKS)
    pq.write_table(kept_frags, out / FRAGMENTS)
    for name in (TOPOLOGY, SMALL_DATACENTER, EXPERIMENT):
        if (inp / name).is_file():
            shutil.copyfile(inp / name, out / name)
    return kept.num_rows, tasks.num_rows, kept_frags.num_rows, frags.num_rows
