"""What every benchmark shares: the row columns and the table they are printed in."""

from __future__ import annotations

COLS = ("bench", "metric", "ours", "baseline", "ratio", "target")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def print_table(rows: list[dict], cols: tuple = COLS) -> None:
    """Print benchmark rows as an aligned text table with a header rule."""
    table = [cols] + [tuple(_fmt(r.get(c)) for c in cols) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
