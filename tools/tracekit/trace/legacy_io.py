"""Files of the original Tracekit: find them, read them, write their conversion (``legacy``) as a run folder of this
toolkit, and parse it (``import_original``). docs/traces.md "Importing the original Tracekit's data".

What is recognised as the original's (``find_original``), none of which this toolkit writes:

* a worker's folder ``logs/$RUN_ID/`` holding ``node_meta.json`` (raw logs, maybe its ``CTS/``), or a folder whose
  sub-folders are such folders (the workers' folders gathered as ``<dir>/<node>/``, as the original's export read);
* an original CTS folder (``CTS/`` or ``cctf/``): ``nodes.json`` entries without this toolkit's ``clk_tck`` and
  invocations without ``node_id``; or a folder holding one, or sub-folders holding one.

A node's raw logs are preferred to its CTS (cumulative CPU from process start, status, cpuset, files); its CTS is
read when the raw samples or events are gone.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core.errors import BadInput, BadRunFolder
from tracekit.core.jsonl import BadLines, dumps, read_jsonl
from tracekit.trace import legacy
from tracekit.trace.legacy import (
    IMPORT_NOTE,
    ORIGINAL_CTS_DIRS,
    ORIGINAL_CTS_INVOCATIONS,
    ORIGINAL_CTS_NODES,
    ORIGINAL_CTS_PROC_METRICS,
    ORIGINAL_EVENTS_GLOB,
    ORIGINAL_MERGED_EVENTS,
    ORIGINAL_NODE_META,
    ORIGINAL_RAW_SAMPLES,
)

IMPORT_DIR = "imported"  # default destination: <the original's folder>/imported (a run folder of this toolkit)


@dataclass
class OriginalNode:
    """One worker's data of the original: its folder (raw logs) and/or its CTS folder."""

    folder: Path
    cts: Path | None  # the original CTS folder of this node, if any

    @property
    def has_raw(self) -> bool:
        """The raw logs are read (instead of the CTS): adapter events exist, and raw samples too or no CTS."""
        f = self.folder
        events = any(f.glob(ORIGINAL_EVENTS_GLOB)) or (f / ORIGINAL_MERGED_EVENTS).is_file()
        samples = (f / ORIGINAL_RAW_SAMPLES).is_file() and _raw_samples(f / ORIGINAL_RAW_SAMPLES)
        return events and (samples or self.cts is None)


def _first_line(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    obj = json.loads(raw)
                    return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
    return None


def _raw_samples(path: Path) -> bool:
    """The original collector's raw lines (cumulative ``utime``), not a CTS file of the same name."""
    first = _first_line(path)
    return first is not None and "utime" in first


def is_original_cts(path: Path) -> bool:
    """An original CTS folder (module docstring); never one this toolkit wrote."""
    if not (path / ORIGINAL_CTS_INVOCATIONS).is_file():
        return False
    try:
        nodes = json.loads((path / ORIGINAL_CTS_NODES).read_text())
    except (OSError, ValueError):
        nodes = None
    if isinstance(nodes, dict):
        nodes = [nodes]
    if isinstance(nodes, list) and any(isinstance(n, dict) and "clk_tck" in n for n in nodes):
        return False  # ours: every entry has clk_tck
    first = _first_line(path / ORIGINAL_CTS_INVOCATIONS)
    return first is None or "node_id" not in first


def _cts_of(folder: Path) -> Path | None:
    if is_original_cts(folder):
        return folder
    return next((folder / d for d in ORIGINAL_CTS_DIRS if is_original_cts(folder / d)), None)


def _node_at(folder: Path) -> OriginalNode | None:
    if (folder / ORIGINAL_NODE_META).is_file():
        return OriginalNode(folder, _cts_of(folder))
    cts = _cts_of(folder)
    return OriginalNode(folder, cts) if cts is not None else None


def find_original(path: str | Path) -> list[OriginalNode]:
    """The original's nodes at ``path`` (module docstring); [] when it holds none (e.g. this toolkit's data)."""
    p = Path(path)
    if not p.is_dir():
        return []
    here = _node_at(p)
    if here is not None:
        return [here]
    found = []
    for d in sorted(p.iterdir()):
        if d.is_dir() and d.name != IMPORT_DIR:
            n = _node_at(d)
            if n is not None:
                found.append(n)
    return found


def default_destination(path: str | Path) -> Path:
    """``<folder>/imported``; for an original CTS folder given itself, beside it (``<node folder>/imported``)."""
    p = Path(path)
    return (p.parent if is_original_cts(p) and p.name in ORIGINAL_CTS_DIRS else p) / IMPORT_DIR


def _read(path: Path, bad: BadLines) -> list[dict]:
    return [o for _, o in read_jsonl(path, bad)] if path.is_file() else []


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(obj, list):
        obj = obj[0] if obj and isinstance(obj[0], dict) else {}
    return obj if isinstance(obj, dict) else {}


def read_node(node: OriginalNode, bad: BadLines, clk_tck: int | None = None) -> legacy.NodeImport:
    """Read one original node (raw preferred) and convert it."""
    f = node.folder
    if node.has_raw:
        meta = _read_json(f / ORIGINAL_NODE_META)
        if not meta and node.cts is not None:
            meta = _cts_meta(node.cts)
        adapter_files = sorted(f.glob(ORIGINAL_EVENTS_GLOB))
        # events.jsonl is the merge of events.*.jsonl made by the original's parse: read one or the other
        events = [e for p in adapter_files for e in _read(p, bad)] if adapter_files else \
            _read(f / ORIGINAL_MERGED_EVENTS, bad)
        samples = _read(f / ORIGINAL_RAW_SAMPLES, bad) if _raw_samples(f / ORIGINAL_RAW_SAMPLES) else []
        return legacy.convert_node(meta, events, samples, form="raw", fallback_node=f.name, clk_tck=clk_tck)
    if node.cts is None:
        raise BadInput(f"{f}: the original's node_meta.json without its adapter events ({ORIGINAL_EVENTS_GLOB}, "
                       f"{ORIGINAL_MERGED_EVENTS}) or its CTS folder: nothing to import", path=f)
    meta = _cts_meta(node.cts)
    if not meta and (f / ORIGINAL_NODE_META).is_file():
        meta = _read_json(f / ORIGINAL_NODE_META)
    fallback = f.name if node.cts != f else (f.parent.name if f.name in ORIGINAL_CTS_DIRS else f.name)
    return legacy.convert_node(meta, _read(node.cts / ORIGINAL_CTS_INVOCATIONS, bad),
                               _read(node.cts / ORIGINAL_CTS_PROC_METRICS, bad), form="cts", fallback_node=fallback)


def _cts_meta(cts: Path) -> dict:
    try:
        nodes = json.loads((cts / ORIGINAL_CTS_NODES).read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(nodes, dict):
        nodes = [nodes]
    nodes = [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
    if len(nodes) > 1:
        raise BadInput(f"{cts}: nodes.json lists {len(nodes)} nodes, but the original's CTS invocations do not say "
                       "which node ran them (the original wrote one CTS folder per worker): import each worker's "
                       "folder", path=cts)
    return nodes[0] if nodes else {}


@dataclass
class ImportResult:
    """What ``import_original`` wrote."""

    source: Path
    dest: Path
    nodes: list[str] = field(default_factory=list)
    forms: dict[str, str] = field(default_factory=dict)  # node -> "raw" | "cts"
    executions: int = 0
    samples: int = 0
    notes: Counter = field(default_factory=Counter)
    bad: BadLines = field(default_factory=BadLines)

    def lines(self) -> list[str]:
        out = [f"imported the original Tracekit's data from {self.source} into {self.dest}: "
               f"{len(self.nodes)} node(s) ({', '.join(f'{n} from {f}' for n, f in self.forms.items())}), "
               f"{self.executions} execution(s), {self.samples} sample(s)"]
        for kind, items in legacy.summarize(self.notes).items():
            out += [f"  {kind}: {text}: {n}" for text, n in items.items()]
        if self.bad.count:
            out.append(f"  {self.bad.count} malformed line(s) skipped")
        return out


def import_original(source: str | Path, dest: str | Path | None = None, clk_tck: int | None = None) -> ImportResult:
    """Convert the original's data at ``source`` into a run folder ``dest`` (default ``<source>/imported``) of raw
    logs of this toolkit plus ``imported.json``; a previous import there is replaced. Does not parse."""
    src = Path(source)
    nodes = find_original(src)
    if not nodes:
        raise BadRunFolder(f"{src}: no data of the original Tracekit (node_meta.json, or a CTS folder with its "
                           "nodes.json and invocations.jsonl)", path=src)
    out = Path(dest) if dest else default_destination(src)
    if out.exists() and any(out.iterdir()) and not (out / IMPORT_NOTE).is_file():
        raise BadInput(f"{out}: exists and holds something else than an import; pass another --output", path=out)
    res = ImportResult(src, out)
    converted = [read_node(n, res.bad, clk_tck) for n in nodes]
    seen: Counter = Counter()
    for c in converted:
        seen[c.node_id] += 1
        if seen[c.node_id] > 1:  # two folders of one host name: keep both apart
            c.node_id = f"{c.node_id}-{seen[c.node_id]}"
            c.node_json["node_id"] = c.node_id
            for ev in c.events:
                ev["node_id"] = c.node_id
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    except OSError as exc:  # e.g. archived read-only data: say where else to write
        raise BadInput(f"cannot write the import into {out} ({exc.strerror}): run tools/import_original.py --input "
                       f"{src} --output DIR, then use DIR", path=out) from None
    for n, c in zip(nodes, converted):
        ndir = out / c.node_id
        ndir.mkdir()
        (ndir / "node.json").write_text(json.dumps(c.node_json, indent=1) + "\n")
        with open(ndir / "events.jsonl", "w") as fh:
            fh.writelines(dumps(ev) + "\n" for ev in c.events)
        with open(ndir / "samples.jsonl", "w") as fh:
            fh.writelines(dumps(t) + "\n" for t in c.ticks)
        res.nodes.append(c.node_id)
        res.forms[c.node_id] = "raw" if n.has_raw else "cts"
        res.executions += len(c.events)
        res.samples += sum(len(t["procs"]) for t in c.ticks)
        res.notes.update(c.notes)
    res.notes["bad_records"] += res.bad.count
    note = {"source": str(src.resolve()), "nodes": res.forms, "executions": res.executions, "samples": res.samples,
            "notes": dict(res.notes), "summary": legacy.summarize(res.notes)}
    (out / IMPORT_NOTE).write_text(json.dumps(note, indent=1) + "\n")
    return res


def import_and_parse(source: str | Path, dest: str | Path | None = None, clk_tck: int | None = None,
                     cts_out: Path | None = None, with_plots: bool = True, progress: bool = False):
    """``import_original`` then the normal parse and audit of the imported run folder; returns
    (ImportResult, ParseResult, checks, report path)."""
    from tracekit.trace.audit import parse_and_audit

    res = import_original(source, dest, clk_tck)
    r, checks, report = parse_and_audit(res.dest, cts_out, with_plots=with_plots, progress=progress)
    return res, r, checks, report
