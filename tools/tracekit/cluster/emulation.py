"""An emulated N-node cluster on one machine: network + private Redis + supervised processes.

:class:`Cluster` is what ``make demo`` drives and what the chaos harness reuses::

    with Cluster(ClusterConfig(run_id="r1", nodes=3)) as cl:     # network, Redis, supervisor
        for n in cl.node_ids:
            cl.start_node_processes(n)                          # collector, then worker
        cl.wait_nodes_registered()
        cl.start_scheduler()
        cl.kill("node2", "worker"); cl.restart("node2", "worker")  # faults
        cl.cut("node1"); cl.heal("node1"); cl.redis.restart()
    # leaving the block stops everything in reverse order, checks no process is left, removes the network

Nodes are ``node1..nodeN``: each runs in its own network namespace with hostname = node id and
reaches Redis on the bridge with the password from the environment (never argv). Controller
processes (scheduler, dispatcher) run on the host. Without namespaces the nodes are plain processes
with distinct ``NODE_ID``s (:class:`tracekit.cluster.netns.PlainNetwork`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tracekit.cluster import netns, supervisor
from tracekit.cluster.redis_server import RedisServer
from tracekit.cluster.supervisor import Proc, Supervisor
from tracekit.core import paths
from tracekit.core.errors import DependencyMissing, RedisUnavailable, StepFailed, UsageError
from tracekit.core.keys import PREFIX_ENV, Keys
from tracekit.core.redis_conn import PASSWORD_ENV, PASSWORD_FILE_ENV, URL_ENV, redact, resolve_password, strip_password

TOOLS = paths.REPO_ROOT / "tools"
CONTROLLER = paths.CONTROLLER_DIR  # the node name of controller-side processes (logs/$RUN_ID/controller/)

# the user-facing scripts (the same a real cluster runs), relative to tools/
SCRIPTS = {
    "collector": "collect_sys.py",
    "worker": "scheduler/worker.py",
    "scheduler": "scheduler/scheduler_central.py",
    "dispatcher": "scheduler/dispatcher.py",
    "parse": "parse_cts.py",
    "export": "export_opendc.py",
    "perfetto": "export_perfetto.py",
    "replay": "replay_opendc.py",
    "videos": "generate_test_videos.py",
}


def env_setting(name: str, default, cast=str):
    """A setting from the environment (as ``make VAR=...`` passes it): empty = ``default``; bad = one-line error."""
    val = os.environ.get(name)
    if val is None or val == "":
        return default
    try:
        return cast(val)
    except ValueError:
        raise UsageError(f"bad {name}={val!r}") from None


def script(name: str) -> Path:
    """Path of one of :data:`SCRIPTS`."""
    return TOOLS / SCRIPTS[name]


def require_scripts(names: list[str]) -> None:
    """A clear one-line error naming the first needed script that does not exist."""
    missing = [f"tools/{SCRIPTS[n]}" for n in names if not script(n).is_file()]
    if missing:
        raise DependencyMissing(f"{missing[0]} is missing: the demo needs it" +
                                (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""), name=missing[0])


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class ClusterConfig:
    """Settings of an emulated cluster (the ``make demo`` variables map onto these)."""

    run_id: str
    nodes: int = 2
    binding: str = "exclusive"  # worker --cpu-binding
    ratio: float = 1.0  # worker --allocation-ratio
    weigher: str = ""  # scheduler --weigher ("" = first-fit)
    weigher_order: str = "min"
    interval_ms: int = 200  # collector PROC_INTERVAL_MS
    stage: str = "emu"
    redis_url: str | None = None  # use this Redis instead of a private one
    key_prefix: str = ""
    netns_mode: str | None = None  # "auto" | "0" | "1" (default $TRACEKIT_NETNS or auto)
    outputs: str | None = None  # worker --outputs (default: the outputs root)
    worker_args: list[str] = field(default_factory=list)
    scheduler_args: list[str] = field(default_factory=list)
    grace_s: float = 10.0
    redis_appendonly: bool = True  # so RedisServer.restart() (chaos) replays the state


class Cluster:
    """Network, Redis and supervised processes of one emulated run (a context manager)."""

    def __init__(self, cfg: ClusterConfig) -> None:
        if cfg.nodes < 1:
            raise UsageError(f"NODES must be >= 1 (got {cfg.nodes})")
        self.cfg = cfg
        self.node_ids = [f"node{i}" for i in range(1, cfg.nodes + 1)]
        self.net: netns.Network | netns.PlainNetwork | None = None
        self.redis: RedisServer | None = None
        self.url = ""
        self.password: str | None = None
        self.sup: Supervisor | None = None
        self.keys = Keys(cfg.key_prefix)

    # --- life cycle ---
    def start(self) -> Cluster:
        """Create the network and start (or check) Redis; processes are started separately."""
        stale = supervisor.cleanup_stale_runs()  # processes of an earlier demo that was killed -9
        if stale:
            print(f"cluster: stopped {len(stale)} process(es) left by a crashed earlier run", file=sys.stderr)
        try:
            if self.cfg.redis_url:
                self.password = resolve_password(self.cfg.redis_url)
                self.url = strip_password(self.cfg.redis_url)
                mode = self.cfg.netns_mode or os.environ.get(netns.NETNS_ENV, "auto")
                if mode != "0" and is_loopback_url(self.url):
                    # a namespace has its own loopback: it cannot reach a Redis bound to the host's
                    self.net = netns.PlainNetwork(self.node_ids, f"REDIS_URL {redact(self.url)} is on loopback")
                else:
                    self.net = netns.make_network(self.node_ids, mode)
            else:
                self.net = netns.make_network(self.node_ids, self.cfg.netns_mode)
                self.redis = RedisServer(host=self.net.gateway, appendonly=self.cfg.redis_appendonly).start()
                self.url, self.password = self.redis.url, self.redis.password
            self.client()  # fails with one line when Redis is unreachable or rejects the password
            self.sup = Supervisor(self.cfg.run_id, wrap=self.net.wrap,
                                  secrets=(self.password,) if self.password else (), grace_s=self.cfg.grace_s)
            if self.redis is not None and self.redis.proc is not None:
                self.sup.adopt(self.redis.proc.pid)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict:
        """Stop all processes (reverse start order), Redis, the network; never raises for cleanup.

        Returns ``{"exit": {label: status}, "leftovers": [...], "network": [problems]}``.
        """
        report: dict = {"exit": {}, "leftovers": [], "network": []}
        # a second Ctrl-C must not abort the cleanup half-way
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            if self.sup is not None:
                report["exit"] = self.sup.stop_all()
                report["leftovers"] = self.sup.reap()
            if self.redis is not None:
                self.redis.stop()
                self._discard_redis_dir()
            if self.sup is not None:
                self.sup.unregister()
            if self.net is not None:
                report["network"] = self.net.teardown()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
        return report

    def _discard_redis_dir(self) -> None:
        """Keep the private server's log with the run; delete its dir (its config holds the password)."""
        wd = self.redis.workdir if self.redis else None
        if wd is None or not wd.exists():
            return
        log = wd / "redis.log"
        if log.exists():
            dest = paths.daemon_log_path(self.cfg.run_id, CONTROLLER, "redis")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(log, dest)
        shutil.rmtree(wd, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- environment and processes ---
    @property
    def emulated(self) -> bool:
        return bool(self.net and self.net.emulated)

    def describe(self) -> str:
        where = f"private redis-server at {self.url}" if self.redis else f"Redis at {redact(self.url)}"
        return f"{self.net.describe() if self.net else 'no network'}; {where}"

    def env(self, node: str | None = None) -> dict[str, str]:
        """Environment of a process of ``node`` (None = controller): Redis URL without password + password."""
        env = {k: v for k, v in os.environ.items() if k not in (*URL_ENV, PASSWORD_ENV, PASSWORD_FILE_ENV)}
        env.update({
            "RUN_ID": self.cfg.run_id,
            URL_ENV[0]: self.url,
            PREFIX_ENV: self.cfg.key_prefix,
            "PYTHONPATH": os.pathsep.join(p for p in (str(TOOLS), os.environ.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
            "TIME_SYNC": "0",  # nodes share this host's clock; never query a public NTP pool from a demo
        })
        if self.password:
            env[PASSWORD_ENV] = self.password
        if node is not None:
            env.update({"NODE_ID": node, "STAGE": self.cfg.stage,
                        "PROC_PID_DIR": str(paths.pid_dir(self.cfg.run_id)),
                        "PROC_INTERVAL_MS": str(self.cfg.interval_ms)})
        else:
            env.pop("NODE_ID", None)
        return env

    def _sup(self) -> Supervisor:
        if self.sup is None:
            raise RuntimeError("the cluster is not started")  # a call out of order: a bug
        return self.sup

    def collector_argv(self) -> list[str]:
        return [sys.executable, str(script("collector")), "run"]

    def worker_argv(self) -> list[str]:
        outputs = self.cfg.outputs or str(paths.outputs_root())
        return [sys.executable, str(script("worker")), "--outputs", outputs, "--cpu-binding", self.cfg.binding,
                "--allocation-ratio", f"{self.cfg.ratio:g}", *self.cfg.worker_args]

    def scheduler_argv(self) -> list[str]:
        return [sys.executable, str(script("scheduler")), "--weigher", self.cfg.weigher,
                "--weigher-order", self.cfg.weigher_order, *self.cfg.scheduler_args]

    def start_node_processes(self, node: str) -> list[Proc]:
        """Start ``node``'s collector, then its worker (the collector must see the first task)."""
        self._check_node(node)
        sup = self._sup()
        return [sup.start(node, "collector", self.collector_argv(), self.env(node)),
                sup.start(node, "worker", self.worker_argv(), self.env(node))]

    def start_scheduler(self) -> Proc:
        """Start the central scheduler on the controller (host side)."""
        return self._sup().start(CONTROLLER, "scheduler", self.scheduler_argv(), self.env(None), wrap=False)

    def start_controller_process(self, name: str, argv: list[str]) -> Proc:
        """Start any controller-side process (e.g. the dispatcher) under supervision."""
        return self._sup().start(CONTROLLER, name, argv, self.env(None), wrap=False)

    def _check_node(self, node: str) -> None:
        if node not in self.node_ids:
            raise UsageError(f"unknown node {node!r} (nodes: {', '.join(self.node_ids)})")

    # --- faults (chaos harness) ---
    def kill(self, node: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process of a node (or of the controller) alone, like a crash."""
        self._sup().kill(node, name, sig)

    def restart(self, node: str, name: str) -> Proc:
        """Stop (if alive) and start again the same process with the same command and environment."""
        return self._sup().restart(node, name)

    def stop_node(self, node: str) -> None:
        """Stop a node's worker, then its collector (graceful, then forced)."""
        self._check_node(node)
        for name in ("worker", "collector"):
            if (node, name) in self._sup().procs:
                self._sup().stop(node, name)

    def cut(self, node: str) -> None:
        """Cut a node off the network (namespaces only)."""
        self._check_node(node)
        self.net.cut(node)

    def heal(self, node: str) -> None:
        self._check_node(node)
        self.net.heal(node)

    # --- Redis views ---
    def client(self):
        """A decoded client to the cluster's Redis, checked with PING (one-line error otherwise)."""
        import redis

        try:
            c = redis.Redis.from_url(self.url, password=self.password, decode_responses=True,
                                     socket_timeout=10, socket_connect_timeout=5)
            c.ping()
        except redis.AuthenticationError:
            raise RedisUnavailable(f"Redis at {redact(self.url)} rejected the password") from None
        except (redis.RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redact(self.url)}: {exc}") from None
        return c

    def registered_nodes(self, client) -> list[str]:
        return list(client.zrange(self.keys.nodes, 0, -1))

    def wait_nodes_registered(self, timeout: float = 30.0, nodes: list[str] | None = None) -> None:
        """Wait until every node's worker registered (or fail with the tail of a dead process's log)."""
        want = set(nodes or self.node_ids)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if want <= set(self.registered_nodes(client)):
                return
            self.check_alive([(n, name) for n in want for name in ("collector", "worker")])
            if time.monotonic() > deadline:
                missing = sorted(want - set(self.registered_nodes(client)))
                raise StepFailed(f"workers of {', '.join(missing)} did not register within {timeout:g}s; "
                                    f"see {paths.daemon_log_path(self.cfg.run_id, missing[0], 'worker')}")
            time.sleep(0.1)

    def check_alive(self, which: list[tuple[str, str]]) -> None:
        """A one-line error with the log tail when one of these processes has exited."""
        sup = self._sup()
        for key in which:
            p = sup.procs.get(key)
            if p is not None and not p.alive():
                raise StepFailed(f"{p.label} exited with status {p.returncode}: {log_tail(p.log)}")


def log_tail(path: Path, lines: int = 1) -> str:
    """The last non-comment line(s) of a log, for one-line errors."""
    try:
        text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("# ")]
    except OSError:
        return f"no log at {path}"
    return " | ".join(text[-lines:]) if text else f"(empty log {path})"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
