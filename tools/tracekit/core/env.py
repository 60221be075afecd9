"""Environment variables of the original toolkit that more than one area reads (defined once here)."""

from __future__ import annotations

import os

from tracekit.core.errors import UsageError

CPU_FREQ_MHZ = "CPU_FREQ_MHZ"  # per-core MHz given by hand: the collector's node.json and the export's capacity


def cpu_freq_mhz(value: str | None = None) -> float | None:
    """``$CPU_FREQ_MHZ`` (or ``value``) as MHz > 0; None when unset or empty; :class:`UsageError` otherwise (VMs
    whose /proc shows no clock need it: the original toolkit's only way to give it)."""
    if value is None:
        value = os.environ.get(CPU_FREQ_MHZ)
    if value is None or not value.strip():
        return None
    try:
        mhz = float(value)
    except ValueError:
        mhz = -1.0
    if not 0 < mhz < 1e6:
        raise UsageError(f"{CPU_FREQ_MHZ} must be the per-core clock in MHz (> 0), got {value!r}")
    return mhz
