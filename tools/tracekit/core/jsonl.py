"""JSON Lines: atomic appends from several processes, and a reader that survives bad lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:  # optional: a faster parser with the same results (see read_jsonl)
    from orjson import loads as fast_loads
except ImportError:  # pragma: no cover
    fast_loads = json.loads


def dumps(obj: dict) -> str:
    """One compact JSON line (no newline)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def append_line(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON line with a single O_APPEND write, so concurrent writers never interleave."""
    data = (dumps(obj) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class BadLines:
    """Malformed or truncated lines met while reading: counted, with ``file:line`` of the first few."""

    count: int = 0
    examples: list = field(default_factory=list)
    keep: int = 20

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{where}: {why}")


def read_jsonl(path: str | os.PathLike, bad: BadLines | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each valid JSON-object line; record the others in ``bad``.

    orjson parses (fast); a line it refuses is retried with ``json.loads`` (which also takes NaN/Infinity, 1e400,
    lone surrogates, a BOM), so what counts as malformed is exactly what the standard library says. (Only integers
    beyond 64 bits differ: orjson reads them as floats; no field of our files holds one.)
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                obj = fast_loads(raw)
            except (ValueError, UnicodeDecodeError):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    if bad is not None:
                        kind = "truncated line" if not raw.endswith(b"\n") else "malformed JSON"
                        bad.add(f"{path}:{lineno}", f"{kind} ({exc.__class__.__name__})")
                    continue
            if type(obj) is not dict:
                if bad is not None:
                    bad.add(f"{path}:{lineno}", "not a JSON object")
                continue
            yield lineno, obj
