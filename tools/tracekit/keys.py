"""Redis key names (DESIGN.md §4). The only place a key name is spelled.

Every key may carry one prefix so several runs can share one Redis (``--key-prefix`` /
``TRACEKIT_KEY_PREFIX``; default none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PREFIX_ENV = "TRACEKIT_KEY_PREFIX"


@dataclass(frozen=True)
class Keys:
    """Key names for one key prefix."""

    prefix: str = ""

    @classmethod
    def from_env(cls, prefix: str | None = None) -> Keys:
        return cls(prefix if prefix is not None else os.environ.get(PREFIX_ENV, ""))

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # --- public keys fixed by DESIGN.md §4 ---
    @property
    def pending(self) -> str:
        """List of tasks waiting for placement; head (index 0) = oldest."""
        return self._k("q:pending")

    def queue(self, node: str) -> str:
        """List of tasks placed on ``node`` and not yet started."""
        return self._k(f"q:{node}")

    def running(self, node: str) -> str:
        """List of tasks a worker on ``node`` has taken and not yet finished."""
        return self._k(f"running:{node}")

    def cap(self, node: str) -> str:
        """Free capacity units on ``node``."""
        return self._k(f"cap:{node}")

    def cap_total(self, node: str) -> str:
        """Total capacity units of ``node``."""
        return self._k(f"cap_total:{node}")

    def run_count(self, node: str) -> str:
        """Number of tasks placed or running on ``node``."""
        return self._k(f"run_count:{node}")

    @property
    def slots(self) -> str:
        """One token (the node id) per free concurrency slot, slots mode only."""
        return self._k("slots:available")
