"""Service tasks on a worker (docs/services.md): readiness, the published address, the stop.

A service task starts exactly like a batch task (payload gate, binding, adapter, sentinel, exact totals at exit)
and holds its ``cpu_units`` until it ends; what differs is only that it does not end by itself. For each one the
worker runs a :class:`ServiceWatch` thread beside its usual wait thread:

    starting  ``svc:<trace_id>`` (``keys.service``) = {state, host, port, url, node_id, attempt}
    ready     the readiness check passed (a TCP connect, or an HTTP GET answered < 500): ``ts_ready``
    stopping  one of: ``svc:stop:<trace_id>`` was set (``tracekit-admin stop-service``), the run bound
              (``seconds``) passed, the worker is stopping: the adapter gets SIGTERM, forwards it, and SIGKILLs
              the application after ``stop_grace_s`` (a success); the service never became ready within
              ``ready_timeout_s``: SIGINT instead (the same escalation, recorded as a failure)
    stopped   the adapter exited (its exec event holds the exact totals; the worker completes the task as usual)

Each state change is also a line of ``<node_id>/services.jsonl`` (``schema.SERVICE_FIELDS``). The load generator
reads the address from ``svc:<trace_id>`` and never aims anywhere else.
"""

from __future__ import annotations

import http.client
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import redis

from tracekit.core.clock import wall_ms
from tracekit.core.jsonl import append_line
from tracekit.core.keys import Keys
from tracekit.core.schema import SERVICE_FIELDS

log = logging.getLogger("worker.service")
POLL_S = 0.1  # readiness probes and stop checks: often enough for a test of a few seconds, cheap for Redis
KEEP_S = 86400  # the service hash stays readable this long after the service stopped (then expires)
HOST_ENV = "TRACEKIT_SERVICE_HOST"


def service_env(prof: dict) -> dict:
    """What the adapter of a service task gets besides a batch task's environment (docs/internals.md, Worker ->
    adapter): ``TC_SERVICE=1`` (a stop by SIGTERM is its success) and ``TC_STOP_GRACE_S``."""
    return {"TC_SERVICE": "1", "TC_STOP_GRACE_S": f"{prof['stop_grace_s']:g}"}


def advertised_host(redis_url_host: str | None) -> str:
    """The address others reach this node's services at: the local address of a route to the Redis host (the
    controller side reaches the node the same way), loopback when Redis is local or unknown."""
    if not redis_url_host or redis_url_host in ("localhost", "127.0.0.1", "::1"):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((redis_url_host, 9))  # UDP connect sends nothing: it only picks the route
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def probe(host: str, port: int, http_path: str | None, timeout: float = 0.5) -> bool:
    """One readiness probe: TCP connect, or (``http_path``) an HTTP GET answered with a status below 500."""
    try:
        if http_path is None:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", http_path)
            return conn.getresponse().status < 500
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


def service_url(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 literals bracketed)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def same_target(url: str, published: str) -> bool:
    """``url`` aims at the published service address (scheme, host and port equal): the load generator's guard."""
    a, b = urlsplit(url), urlsplit(published)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


class ServiceWatch:
    """Readiness, publication and stop of one running service task (one thread; see the module doc)."""

    def __init__(self, client: redis.Redis, keys: Keys, node: str, trace_id: str, attempt: int, prof: dict,
                 seconds: float, port: int, host: str, log_path: Path, done: Callable[[], bool],
                 worker_stopping: threading.Event, terminate: Callable[[int], None]) -> None:
        self.client, self.keys, self.node = client, keys, node
        self.trace_id, self.attempt, self.prof = trace_id, attempt, prof
        self.seconds, self.port, self.host = seconds, port, host
        self.log_path, self.done, self.worker_stopping, self.terminate = log_path, done, worker_stopping, terminate
        self.url = service_url(host, port)

    def _publish(self, state: str, **extra) -> None:
        ts = round(wall_ms(), 3)
        rec = {"state": state, "host": self.host, "port": self.port, "url": self.url, "node_id": self.node,
               "trace_id": self.trace_id, "attempt": self.attempt, f"ts_{state}": ts, **extra}
        line = dict.fromkeys(SERVICE_FIELDS)
        line.update(kind="service", trace_id=self.trace_id, attempt=self.attempt, node_id=self.node, ts=ts,
                    state=state, host=self.host, port=self.port, url=self.url, stop_reason=extra.get("stop_reason"))
        try:
            append_line(self.log_path, line)
        except OSError as exc:
            log.warning("service %s: cannot append to %s: %s", self.trace_id, self.log_path, exc)
        try:
            key = self.keys.service(self.trace_id)
            pipe = self.client.pipeline()
            pipe.hset(key, mapping={k: str(v) for k, v in rec.items() if v is not None})
            pipe.expire(key, KEEP_S)
            pipe.execute()
        except redis.RedisError as exc:  # the service runs on; the load generator waits for the state
            log.warning("service %s: cannot publish state %s: %s", self.trace_id, state, exc)

    def _stop_requested(self) -> str | None:
        try:
            why = self.client.get(self.keys.service_stop(self.trace_id))
        except redis.RedisError:
            return None
        if why is None:
            return None
        return why.decode(errors="replace") if isinstance(why, bytes) else str(why)

    def run(self) -> None:
        """Watch until the service ended; stop it when asked or bound (see the module doc)."""
        t0 = time.monotonic()
        self._publish("starting")
        http_path = self.prof["ready"].get("http")
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        reason = None
        ready = False
        while not self.done():
            if probe(probe_host, self.port, http_path):
                ready = True
                break
            if time.monotonic() - t0 > self.prof["ready_timeout_s"]:
                reason = f"not ready after {self.prof['ready_timeout_s']:g} s"
                break
            if self.worker_stopping.is_set():
                reason = "worker stopping"
                break
            time.sleep(POLL_S)
        if ready:
            self._publish("ready")
            log.info("service %s ready at %s", self.trace_id, self.url)
        while reason is None and not self.done():
            asked = self._stop_requested()
            if asked is not None:
                reason = f"stop requested: {asked}" if asked not in ("", "1") else "stop requested"
            elif time.monotonic() - t0 >= self.seconds:
                reason = f"ran its {self.seconds:g} s bound"
            elif self.worker_stopping.is_set():
                reason = "worker stopping"
            else:
                time.sleep(POLL_S)
        if reason is not None and not self.done():
            self._publish("stopping", stop_reason=reason)
            log.info("stopping service %s: %s", self.trace_id, reason)
            # a service that never became ready failed: SIGINT (the adapter then records a failure, not a stop)
            self.terminate(signal.SIGTERM if ready or reason == "worker stopping" else signal.SIGINT)
        while not self.done():
            time.sleep(POLL_S)
        self._publish("stopped", stop_reason=reason or "ended by itself")


def request_stop(client: redis.Redis, keys: Keys, trace_id: str, reason: str = "admin") -> int:
    """Ask the worker running service ``trace_id`` to stop it (``tracekit-admin stop-service``); 0."""
    client.set(keys.service_stop(trace_id), reason or "1", ex=KEEP_S)
    print(f"stop requested for service {trace_id}")
    return 0
