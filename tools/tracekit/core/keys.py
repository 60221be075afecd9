"""Redis key names (listed in docs/control-plane.md, "Redis keys"). The only place a key name is spelled.

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

    # --- public keys: part of the public contract (other tools read them), never renamed ---
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

    # --- control-plane keys (docs/control-plane.md "Redis keys") ---
    @property
    def nodes(self) -> str:
        """Sorted set of registered node ids (all scores 0, so ZRANGE yields node_id order)."""
        return self._k("nodes")

    def index(self, name: str) -> str:
        """The placement index (control/lua.py, INDEX): ``idx:free`` (nodes with free capacity, node_id order),
        ``idx:cap`` (score = free cap), ``idx:slots`` (hash node -> free slot tokens), ``idx:big`` (set of nodes
        whose weigher scores need exact tie checks), ``idx:w:<weigher>:<min|max>`` (score = +/- value),
        ``idx:active`` (the weigher indexes kept up to date)."""
        return self._k(f"idx:{name}")

    def index_keys(self, weighers: tuple[str, ...] | list[str] = ()) -> list[str]:
        """Every key of the placement index: the fixed ones and one zset per weigher (``weighers``) and order."""
        return [self.index(n) for n in ("free", "cap", "slots", "big", "active")] + [
            self.index(f"w:{w}:{o}") for w in weighers for o in ("min", "max")]

    def node_info(self, node: str) -> str:
        """Hash: the worker's registration (cores, mem_mb, capacity, parallel, binding, instance, ...)."""
        return self._k(f"node:{node}")

    def heartbeat(self, node: str) -> str:
        """String with a short TTL (ms): the worker instance id; its absence means the node is dead."""
        return self._k(f"hb:{node}")

    @property
    def wake(self) -> str:
        """List of at most one token: pushed when something changes, the scheduler blocks on it."""
        return self._k("wake")

    @property
    def done(self) -> str:
        """Hash trace_id -> JSON record of the accepted successful completion."""
        return self._k("done")

    @property
    def failed(self) -> str:
        """Hash trace_id -> JSON record (reason, attempt, node) of a task given up or failed."""
        return self._k("failed")

    @property
    def events(self) -> str:
        """Stream of control-plane events (enqueue, place, start, done, failed, recover) for progress."""
        return self._k("events")

    @property
    def controller_log(self) -> str:
        """Stream of controller log records (placements, failed tasks), drained by the scheduler into
        placements.jsonl and controller/events.jsonl exactly once (each line carries its stream id)."""
        return self._k("controller:log")

    @property
    def scheduler_lock(self) -> str:
        """String with TTL: the running central scheduler (host:pid:instance)."""
        return self._k("scheduler:lock")

    @property
    def seq(self) -> str:
        """Counter for trace ids handed out by dispatchers."""
        return self._k("seq")

    @property
    def trace_ids(self) -> str:
        """Hash trace_id -> how the run last used it (``p<attempt>@<node>`` placed there, ``q<attempt>`` re-queued,
        ``f`` failed, ``d`` completed): the central scheduler refuses a second payload with a trace_id already used;
        a completion gives capacity back only for the placement recorded here."""
        return self._k("trace_ids")

    @property
    def config(self) -> str:
        """Hash of run-wide settings written by the scheduler (max_attempts)."""
        return self._k("config")

    @property
    def health(self) -> str:
        """Hash daemon (``worker:<node>``, ``scheduler``) -> JSON of what fails while it is degraded."""
        return self._k("health")

    def owner(self, node: str) -> str:
        """String with TTL: ``host:pid:instance`` of the one worker that runs ``node`` (refreshed by its heartbeat)."""
        return self._k(f"owner:{node}")

    # --- services (docs/services.md) ---
    def service(self, trace_id: str) -> str:
        """Hash: where the service task ``trace_id`` listens and its state (``schema.SERVICE_STATES``): ``state,
        host, port, url, node_id, attempt, ts_ready, stop_reason``; written by the worker that runs it."""
        return self._k(f"svc:{trace_id}")

    @property
    def services_pattern(self) -> str:
        """SCAN pattern of every service key (``svc:*``), for ``admin clean``."""
        return self._k("svc:*")

    def service_stop(self, trace_id: str) -> str:
        """String: set (to the reason) to ask the worker running service ``trace_id`` to stop it."""
        return self._k(f"svc:stop:{trace_id}")

    def control_keys(self, nodes: list[str] | tuple[str, ...] = (), weighers: tuple[str, ...] | list[str] = ()
                     ) -> list[str]:
        """Every key of the control plane for this prefix, these nodes and weighers (for ``admin clean``)."""
        fixed = [self.pending, self.slots, self.nodes, self.wake, self.done, self.failed, self.events,
                 self.controller_log, self.scheduler_lock, self.seq, self.config, self.health, self.trace_ids,
                 *self.index_keys(weighers)]
        per_node = [k for n in nodes for k in (self.queue(n), self.running(n), self.cap(n), self.cap_total(n),
                                                self.run_count(n), self.node_info(n), self.heartbeat(n),
                                                self.owner(n))]
        return fixed + per_node


PER_NODE = ("queue", "running", "cap", "cap_total", "run_count", "node_info", "heartbeat", "owner")


def reserved_node_ids() -> frozenset[str]:
    """Node ids whose per-node key would be one of the fixed keys (``pending``: ``q:pending``)."""
    k = Keys()
    fixed = [k.pending, k.slots, k.nodes, k.wake, k.done, k.failed, k.events, k.controller_log,
             k.scheduler_lock, k.seq, k.config, k.health]
    out = set()
    for name in PER_NODE:
        pre, _, post = getattr(k, name)("\x00").partition("\x00")
        out.update(f[len(pre):len(f) - len(post)] for f in fixed
                   if f.startswith(pre) and f.endswith(post) and len(f) > len(pre) + len(post))
    return frozenset(out)
