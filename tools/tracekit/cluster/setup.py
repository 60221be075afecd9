"""Real-cluster setup behind ``tools/setup_controller.sh`` and ``tools/setup_worker.sh`` (idempotent).

Controller: a redis-server configuration with ``requirepass`` (a strong generated password, or a
given one that passes :func:`password_weakness`), ``bind``, ``protected-mode yes``, optional TLS,
``appendonly yes`` + ``appendfsync everysec``; the password in a 0600 file; the server started (or
restarted when its configuration changed) and checked; ``run_id.env`` written with the run id and
the Redis URL (never the password).

Worker: ``run_id.env`` present (copied from the controller) or written, the password file checked
(0600, strong), and a PING with it over the network.

Importing this module needs only the standard library (the controller may not have redis-py yet).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from tracekit.core import paths
from tracekit.core.errors import BadInput, Conflict, DependencyMissing, RedisUnavailable, UsageError

MIN_PASSWORD_LEN = 16
# the most common passwords and password stems; a password that is one of these, or one of these
# padded with digits/symbols, is refused whatever its length
COMMON = {
    "password", "passw0rd", "123456", "12345678", "123456789", "1234567890", "qwerty", "qwertyuiop", "abc123",
    "letmein", "welcome", "admin", "administrator", "root", "toor", "redis", "redispass", "changeme", "secret",
    "default", "iloveyou", "monkey", "dragon", "master", "football", "baseball", "sunshine", "princess",
    "trustno1", "wsr123", "tracekit", "controller", "foobar", "test", "guest", "login", "shadow", "superman",
}


def password_weakness(password: str) -> str | None:
    """Why ``password`` is too weak for a Redis reachable over a network, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LEN:
        return f"shorter than {MIN_PASSWORD_LEN} characters"
    if any(c.isspace() for c in password) or '"' in password or "'" in password:
        return "contains whitespace or quotes (they break redis.conf)"
    low = password.lower()
    stem = re.sub(r"[^a-z]", "", low)
    if low in COMMON or _common_words(stem) or re.sub(r"[\d\W_]+$", "", low) in COMMON:
        return "a common password"
    if len(set(password)) < 8:
        return "too few distinct characters"
    if _sequential(low):
        return "a keyboard or counting sequence"
    return None


def _common_words(stem: str) -> bool:
    """Whether the letters of a password are only common words glued together (e.g. redis + password)."""
    if not stem:
        return False
    ok = [True] + [False] * len(stem)
    for i in range(1, len(stem) + 1):
        ok[i] = any(ok[j] and stem[j:i] in COMMON for j in range(max(0, i - 16), i))
    return ok[-1]


def _sequential(s: str) -> bool:
    rows = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "qwertyuiopasdfghjklzxcvbnm")
    runs = sum(1 for i in range(len(s) - 2) if any(s[i:i + 3] in r for r in rows))
    return runs >= len(s) - 4  # almost all of it is one run


def generate_password() -> str:
    """A strong random password (43 URL-safe characters, 256 bits)."""
    while True:
        pw = secrets.token_urlsafe(32)
        if password_weakness(pw) is None:
            return pw


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600 from the first byte (dir 0700 when created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)


def read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"cannot read password file {path}: {exc.strerror}", path=path) from None
    if not value:
        raise BadInput(f"password file {path} is empty", path=path)
    return value


def check_secret_mode(path: Path) -> None:
    """Refuse a password file others can read (and say how to fix it)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise BadInput(f"password file {path} has mode {mode:o}: others can read it (chmod 600 {path})", path=path)


def redis_config(*, bind: list[str], port: int, password: str, data_dir: Path, tls_port: int = 0,
                 tls_cert: str | None = None, tls_key: str | None = None, tls_ca: str | None = None,
                 tls_only: bool = False) -> str:
    """The redis.conf text (pure): auth, bind, protected mode, AOF every second, optional TLS."""
    lines = [
        "# written by tools/setup_controller.sh (Tracekit); re-running it rewrites this file",
        f"bind {' '.join(bind)}",
        "protected-mode yes",
        f"port {0 if tls_only else port}",
        f"requirepass {password}",
        "appendonly yes",
        "appendfsync everysec",
        f"dir {data_dir}",
        "daemonize yes",
        f"pidfile {data_dir / 'redis.pid'}",
        f"logfile {data_dir / 'redis.log'}",
        "save 900 1",
        "tcp-keepalive 60",
        # the Lua placement scripts are short, but a slow controller must not block heartbeats for long
        "busy-reply-threshold 5000",
    ]
    if tls_port:
        if not (tls_cert and tls_key):
            raise UsageError("--tls-port needs --tls-cert and --tls-key")
        lines += [f"tls-port {tls_port}", f"tls-cert-file {tls_cert}", f"tls-key-file {tls_key}"]
        if tls_ca:
            lines += [f"tls-ca-cert-file {tls_ca}", "tls-auth-clients optional"]
        else:
            lines.append("tls-auth-clients no")
    elif tls_only:
        raise UsageError("--tls-only needs --tls-port")
    return "\n".join(lines) + "\n"


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _ping(host: str, port: int, password: str | None, timeout: float = 2.0) -> str:
    """RESP PING over a plain socket (stdlib only): "PONG", "NOAUTH", "WRONGPASS" or the error."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if password is not None:
                s.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
                reply = s.recv(256).decode(errors="replace")
                if not reply.startswith("+OK"):
                    return "WRONGPASS"
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(256).decode(errors="replace")
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"
    if reply.startswith("+PONG"):
        return "PONG"
    return "NOAUTH" if "NOAUTH" in reply else reply.strip()


def _wait_ping(host: str, port: int, password: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = _ping(host, port, password)
        if r == "PONG" or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write/update ``export K=V`` lines of ``run_id.env``, keeping other lines (no secrets go here)."""
    keep = []
    if path.exists():
        names = "|".join(re.escape(k) for k in values)
        keep = [ln for ln in path.read_text().splitlines() if not re.match(rf"^\s*(export\s+)?({names})=", ln)]
    body = [f"export {k}={v}" for k, v in values.items()] + keep
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text("\n".join(body) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}", path=path) from None


def default_password_file() -> Path:
    """``/etc/tracekit/redis.pass`` as root, else ``~/.config/tracekit/redis.pass``."""
    if os.geteuid() == 0:
        return Path("/etc/tracekit/redis.pass")
    return Path.home() / ".config" / "tracekit" / "redis.pass"


def new_run_id(prefix: str = "run") -> str:
    """A fresh run id ``<prefix>-YYYYmmdd-HHMMSS-xxxx`` (UTC)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _resolve_password(pw_file: Path, rotate: bool) -> tuple[str, str]:
    given = os.environ.get("TRACEKIT_REDIS_PASSWORD")
    if given:
        why = password_weakness(given)
        if why:
            raise UsageError(f"refusing the password in $TRACEKIT_REDIS_PASSWORD: {why}; unset it to get a "
                             "generated one")
        return given, "given ($TRACEKIT_REDIS_PASSWORD)"
    if pw_file.exists() and not rotate:
        pw = read_secret(pw_file)
        why = password_weakness(pw)
        if why:
            raise BadInput(f"refusing the password in {pw_file}: {why}; use --rotate-password to replace it",
                           path=pw_file)
        return pw, f"kept ({pw_file})"
    return generate_password(), "generated"


def controller(args: argparse.Namespace) -> int:
    """Configure (and start) the controller's redis-server; see the module docstring."""
    data_dir = Path(args.data_dir).resolve()
    conf = Path(args.conf).resolve()
    pw_file = Path(args.password_file).resolve()
    pidfile = data_dir / "redis.pid"
    if args.stop:
        pid = _pid_alive(pidfile)
        if pid:
            _stop_pid(pid)
            print(f"setup_controller: stopped redis-server (pid {pid})")
        else:
            print("setup_controller: redis-server was not running")
        return 0
    if shutil.which("redis-server") is None:
        raise DependencyMissing("redis-server not found (run without --no-install, or: "
                                "apt-get install -y redis-server)", name="redis-server")
    password, origin = _resolve_password(pw_file, args.rotate_password)
    bind = args.bind.split()
    if not any(b in ("127.0.0.1", "0.0.0.0", "*") for b in bind):
        bind.append("127.0.0.1")  # local tools (redis-cli, make status) on the controller itself
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = redis_config(bind=bind, port=args.port, password=password, data_dir=data_dir, tls_port=args.tls_port,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca, tls_only=args.tls_only)
    changed = not conf.exists() or conf.read_text() != text
    if changed:
        write_secret(conf, text.rstrip("\n"))  # it holds requirepass: 0600 like the password file
    if not pw_file.exists() or read_secret(pw_file) != password:
        write_secret(pw_file, password)
    os.chmod(pw_file, 0o600)
    print(f"setup_controller: config {conf} ({'written' if changed else 'unchanged'}), password {origin}, "
          f"password file {pw_file} (0600)")
    host = "127.0.0.1" if "127.0.0.1" in bind else bind[0]
    if not args.no_start:
        pid = _pid_alive(pidfile)
        if pid and changed:
            print(f"setup_controller: configuration changed: restarting redis-server (pid {pid})")
            _stop_pid(pid)
            pid = None
        if pid is None:
            proc = subprocess.run(["redis-server", str(conf)], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RedisUnavailable(f"redis-server did not start: {(proc.stderr or proc.stdout).strip()[-300:]}")
        if args.tls_only:
            print(f"setup_controller: TLS only on port {args.tls_port}: check it with "
                  f"redis-cli --tls --cacert CA -p {args.tls_port} (password from {pw_file})")
        else:
            r = _wait_ping(host, args.port, password, 10.0)
            if r != "PONG":
                raise RedisUnavailable(f"redis-server on {host}:{args.port} does not answer with the password: {r} "
                                       f"(see {data_dir / 'redis.log'})")
            unauth = _ping(host, args.port, None)
            if unauth != "NOAUTH":
                raise Conflict(f"redis-server on {host}:{args.port} answers without a password ({unauth})")
            print(f"setup_controller: redis-server up on {' '.join(bind)} port {args.port}: PONG with the password, "
                  "NOAUTH without it; appendonly yes (fsync every second)")
    public = next((b for b in bind if b not in ("127.0.0.1", "::1", "-::1")), bind[0])
    scheme, port = ("rediss", args.tls_port) if args.tls_only else ("redis", args.port)
    url = f"{scheme}://{public}:{port}/0"
    env_file = Path(args.run_id_file)
    rid = args.run_id or paths.read_run_id_file(env_file) or new_run_id()
    paths.check_id("RUN_ID", rid)
    write_env_file(env_file, {"RUN_ID": rid, "TRACEKIT_REDIS_URL": url,
                              "TRACEKIT_REDIS_PASSWORD_FILE": str(pw_file)})
    print(f"setup_controller: {env_file}: RUN_ID={rid}, TRACEKIT_REDIS_URL={url} (no password in it)")
    print(f"next: copy {env_file} to every worker's checkout and {pw_file} to the same path on every worker "
          f"(scp -p, keep mode 0600), then run tools/setup_worker.sh there")
    return 0


def worker(args: argparse.Namespace) -> int:
    """Check (and complete) a worker's setup: run_id.env, password file, Redis reachable with it."""
    env_file = Path(args.run_id_file)
    if args.run_id:
        write_env_file(env_file, {"RUN_ID": paths.check_id("RUN_ID", args.run_id)})
    rid = paths.read_run_id_file(env_file)
    if not rid:
        raise BadInput(f"no RUN_ID in {env_file}: copy run_id.env from the controller or pass --run-id", path=env_file)
    env_vals = _read_env_file(env_file)
    url = args.redis or env_vals.get("TRACEKIT_REDIS_URL") or os.environ.get("TRACEKIT_REDIS_URL")
    if not url:
        raise UsageError(f"no Redis URL: pass --redis or set TRACEKIT_REDIS_URL in {env_file}")
    pw_path = args.password_file or env_vals.get("TRACEKIT_REDIS_PASSWORD_FILE") or str(default_password_file())
    pw_file = Path(pw_path)
    if not pw_file.exists():
        raise BadInput(f"password file {pw_file} not found: copy it from the controller (scp -p, mode 0600)",
                       path=pw_file)
    check_secret_mode(pw_file)
    why = password_weakness(read_secret(pw_file))
    if why:
        raise BadInput(f"the password in {pw_file} is weak ({why}): rotate it on the controller "
                       "(setup_controller.sh --rotate-password)", path=pw_file)
    if args.redis or not env_vals.get("TRACEKIT_REDIS_URL"):
        write_env_file(env_file, {"TRACEKIT_REDIS_URL": url})
    if args.password_file:
        write_env_file(env_file, {"TRACEKIT_REDIS_PASSWORD_FILE": str(pw_file.resolve())})
    from tracekit.core.clock import redis_clock_offset  # needs redis-py: installed by now
    from tracekit.core.redis_conn import connect, redact

    client = connect(url, str(pw_file))
    off = redis_clock_offset(client)
    missing = [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]
    node = paths.node_id(args.node_id)
    print(f"setup_worker: node {node}: RUN_ID={rid}; Redis {redact(url)} answers PONG with {pw_file}; "
          f"clock offset to the controller {off.offset_ms:+.1f} ms (rtt {off.rtt_ms:.1f} ms)")
    if missing:
        raise DependencyMissing(f"missing on this worker: {', '.join(missing)} (apt-get install -y ffmpeg)",
                                name=missing[0])
    if abs(off.offset_ms) > 1000:
        print(f"setup_worker: warning: the clock is {off.offset_ms / 1000:+.1f} s off the controller's; "
              "Tracekit corrects it in the traces, but consider chrony", file=sys.stderr)
    print("next: source run_id.env; make start-collect; python3 tools/scheduler/worker.py --outputs outputs ...")
    return 0


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    try:
        for ln in path.read_text().splitlines():
            m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", ln)
            if m:
                out[m.group(1)] = m.group(2).strip().strip("'\"")
    except OSError:
        pass
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="setup", description="Tracekit real-cluster setup (idempotent).")
    sub = p.add_subparsers(dest="role", required=True)
    c = sub.add_parser("controller", prog="setup_controller.sh",
                       description="Install and configure the controller's redis-server for Tracekit: requirepass "
                       "(generated, or $TRACEKIT_REDIS_PASSWORD if strong), bind, protected-mode, AOF every second, "
                       "optional TLS; password in a 0600 file; run_id.env with RUN_ID and the Redis URL. "
                       "Re-running keeps the password and restarts Redis only when its configuration changed.")
    c.add_argument("--bind", default="0.0.0.0",
                   help="address(es) Redis listens on, space separated (default 0.0.0.0; prefer the controller's "
                   "private address); 127.0.0.1 is added for local tools")
    c.add_argument("--port", type=int, default=6379, help="plain TCP port (default 6379)")
    c.add_argument("--tls-port", type=int, default=0, help="also listen with TLS on this port (default: off)")
    c.add_argument("--tls-cert", help="server certificate (PEM) for --tls-port")
    c.add_argument("--tls-key", help="server private key (PEM) for --tls-port")
    c.add_argument("--tls-ca", help="CA certificate (PEM) to verify client certificates (optional)")
    c.add_argument("--tls-only", action="store_true", help="disable the plain port (port 0): TLS only")
    c.add_argument("--conf", default="/etc/redis/tracekit.conf", help="redis config to write (default "
                   "/etc/redis/tracekit.conf, mode 0600)")
    c.add_argument("--data-dir", default="/var/lib/tracekit-redis",
                   help="Redis dir: AOF, pidfile, log (default /var/lib/tracekit-redis)")
    c.add_argument("--password-file", default=str(default_password_file()),
                   help=f"where the password is kept, mode 0600 (default {default_password_file()})")
    c.add_argument("--rotate-password", action="store_true", help="replace the kept password by a new one")
    c.add_argument("--run-id", help="RUN_ID to write to run_id.env (default: keep the file's, else a new one)")
    c.add_argument("--run-id-file", default=str(paths.RUN_ID_FILE), help="default: run_id.env at the repo root")
    c.add_argument("--no-start", action="store_true", help="write the files only")
    c.add_argument("--stop", action="store_true", help="stop the redis-server started by this script, then exit")
    c.add_argument("--no-install", action="store_true", help="(shell) do not apt-get install redis-server")
    w = sub.add_parser("worker", prog="setup_worker.sh",
                       description="Check a worker: run_id.env (from the controller), the Redis password file "
                       "(0600, strong), Redis reachable with it, ffmpeg present; prints the clock offset.")
    w.add_argument("--redis", help="controller Redis URL, without password (default: TRACEKIT_REDIS_URL from "
                   "run_id.env)")
    w.add_argument("--password-file", help="password file copied from the controller (default: "
                   f"TRACEKIT_REDIS_PASSWORD_FILE from run_id.env, else {default_password_file()})")
    w.add_argument("--run-id", help="write this RUN_ID to run_id.env (default: keep the controller's)")
    w.add_argument("--run-id-file", default=str(paths.RUN_ID_FILE), help="default: run_id.env at the repo root")
    w.add_argument("--node-id", help="node id to report (default: $NODE_ID or the hostname)")
    w.add_argument("--no-install", action="store_true", help="(shell) do not install ffmpeg / Python packages")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m tracekit.cluster.setup {controller,worker} ...``."""
    args = build_parser().parse_args(argv)
    return controller(args) if args.role == "controller" else worker(args)
