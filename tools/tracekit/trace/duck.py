"""DuckDB connections as the toolkit opens them."""

from __future__ import annotations


def connect(**config):
    """A DuckDB connection with ``config``, without DuckDB's own progress bar (it would print into our output;
    our commands show their own)."""
    import duckdb

    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")
    return con
