"""Start and stop a private ``redis-server`` (tests, ``make demo``, ``make chaos``).

Free loopback port, random password passed through a config file on stdin's place (never argv),
optional AOF persistence. Used by the test fixtures and the demo harness alike.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core.errors import DependencyMissing, RedisUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    """A private redis-server; ``url`` carries no password, ``password`` holds it."""

    host: str = "127.0.0.1"
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    appendonly: bool = False
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING with the password."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise DependencyMissing("redis-server not found: install it (apt-get install -y redis-server)",
                                    name="redis-server")
        if not self.port:
            self.port = free_port(self.host)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tracekit-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.write_text(
            f"bind {self.host}\nport {self.port}\nrequirepass {self.password}\nprotected-mode yes\n"
            f"dir {self.workdir}\nsave \"\"\nappendonly {'yes' if self.appendonly else 'no'}\n"
            "appendfsync everysec\ndaemonize no\nlogfile redis.log\n"
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        self.tune()
        return self

    def tune(self) -> None:
        """Settings for a Redis that only Tracekit uses: no per-command latency histograms (Redis >= 7 keeps one
        for every command a Lua step calls, ~5 % of the scheduler's Redis CPU; Tracekit never reads them)."""
        import redis

        with contextlib.suppress(redis.ResponseError):  # Redis 6.2 has no such setting (and no such cost)
            self.client().config_set("latency-tracking", "no")

    def wait_ready(self, timeout: float = 10.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_timeout=1).ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                if self.proc and self.proc.poll() is not None:
                    raise RedisUnavailable(f"redis-server exited with {self.proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise RedisUnavailable(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data dir (AOF replays if enabled)."""
        self.stop()
        self.start()

    def client(self, **kwargs):
        import redis

        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           decode_responses=True, **kwargs)
