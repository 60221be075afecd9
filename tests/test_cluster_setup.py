"""Real-cluster setup scripts: a real redis-server configured by setup_controller.sh, checked by setup_worker.sh."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import redis

from tracekit.cluster.redis_server import free_port
from tracekit.cluster.setup import generate_password, password_weakness, redis_config
from tracekit.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
NEEDS_REDIS = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


# --- pure logic ---
@pytest.mark.parametrize("pw, why", [
    ("short-Pw1", "shorter"),
    ("password12345678", "common"),
    ("Password!!!!2024", "common"),
    ("wsr123wsr123wsr123", ""),
    ("Redis-Password-2024", "common"),
    ("aaaaaaaaaaaaaaaaaaaa", "distinct"),
    ("abcdefghijklmnopqrst", "sequence"),
    ("good pass with spaces 1234", "whitespace"),
])
def test_weak_passwords_are_refused(pw, why):
    reason = password_weakness(pw)
    assert reason is not None and why in reason


def test_generated_and_random_passwords_pass():
    assert password_weakness(generate_password()) is None
    assert len(generate_password()) >= 32
    assert password_weakness("k7#Vq2!mZr9$Lw4x") is None


def test_redis_config_has_auth_bind_protected_mode_aof_and_tls(tmp_path):
    text = redis_config(bind=["10.0.0.5", "127.0.0.1"], port=6380, password="P" * 20, data_dir=tmp_path,
                        tls_port=6390, tls_cert="/c.pem", tls_key="/k.pem", tls_ca="/ca.pem")
    lines = set(text.splitlines())
    assert {"bind 10.0.0.5 127.0.0.1", "port 6380", "protected-mode yes", f"requirepass {'P' * 20}",
            "appendonly yes", "appendfsync everysec", "tls-port 6390", "tls-cert-file /c.pem",
            "tls-key-file /k.pem", "tls-ca-cert-file /ca.pem"} <= lines
    assert "port 0" in redis_config(bind=["a"], port=1, password="x", data_dir=tmp_path, tls_port=2,
                                    tls_cert="c", tls_key="k", tls_only=True)
    with pytest.raises(UsageError, match="--tls-cert"):
        redis_config(bind=["a"], port=1, password="x", data_dir=tmp_path, tls_port=2)


# --- the scripts, against a real redis-server ---
def sh(script: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS")}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(REPO / "tools" / script), *args], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def ctl(tmp_path):
    port = free_port()
    args = ["--no-install", "--bind", "127.0.0.1", "--port", str(port), "--conf", str(tmp_path / "etc/redis.conf"),
            "--data-dir", str(tmp_path / "data"), "--password-file", str(tmp_path / "pass"),
            "--run-id-file", str(tmp_path / "run_id.env")]
    yield tmp_path, port, args
    sh("setup_controller.sh", *args, "--stop")


def one_line_error(proc: subprocess.CompletedProcess, prog: str, words: str) -> None:
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:") and words in err[0], proc.stderr


@NEEDS_REDIS
def test_controller_setup_is_secure_and_idempotent(ctl):
    tmp, port, args = ctl
    first = sh("setup_controller.sh", *args, "--run-id", "r-setup")
    assert first.returncode == 0, first.stderr
    pw = (tmp / "pass").read_text().strip()
    assert password_weakness(pw) is None and pw not in first.stdout + first.stderr
    for f in (tmp / "pass", tmp / "etc/redis.conf"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    env_text = (tmp / "run_id.env").read_text()
    assert "export RUN_ID=r-setup" in env_text and f"redis://127.0.0.1:{port}/0" in env_text and pw not in env_text

    r = redis.Redis(port=port, password=pw, decode_responses=True)
    assert r.ping()
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert r.config_get("protected-mode") == {"protected-mode": "yes"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    pid = int((tmp / "data/redis.pid").read_text())

    again = sh("setup_controller.sh", *args)
    assert again.returncode == 0 and "unchanged" in again.stdout and "kept" in again.stdout
    assert (tmp / "pass").read_text().strip() == pw and int((tmp / "data/redis.pid").read_text()) == pid
    assert "export RUN_ID=r-setup" in (tmp / "run_id.env").read_text()

    weak = sh("setup_controller.sh", *args, env_extra={"TRACEKIT_REDIS_PASSWORD": "redis-password-2024"})
    one_line_error(weak, "setup_controller", "refusing")
    assert (tmp / "pass").read_text().strip() == pw  # nothing changed

    rotated = sh("setup_controller.sh", *args, "--rotate-password")
    assert rotated.returncode == 0 and "restarting" in rotated.stdout
    new = (tmp / "pass").read_text().strip()
    assert new != pw and redis.Redis(port=port, password=new).ping()


@NEEDS_REDIS
def test_worker_setup_checks_password_file_and_connectivity(ctl):
    tmp, port, args = ctl
    assert sh("setup_controller.sh", *args, "--run-id", "r-w").returncode == 0
    env_file = str(tmp / "run_id.env")
    ok = sh("setup_worker.sh", "--no-install", "--run-id-file", env_file, "--node-id", "w1")
    assert ok.returncode == 0, ok.stderr
    assert "node w1: RUN_ID=r-w" in ok.stdout and "PONG" in ok.stdout

    wrong = tmp / "wrong.pass"
    wrong.write_text(generate_password() + "\n")
    wrong.chmod(0o600)
    one_line_error(sh("setup_worker.sh", "--no-install", "--run-id-file", env_file, "--password-file", str(wrong)),
                   "setup_worker", "rejected the password")
    wrong.chmod(0o644)
    one_line_error(sh("setup_worker.sh", "--no-install", "--run-id-file", env_file, "--password-file", str(wrong)),
                   "setup_worker", "chmod 600")
    one_line_error(sh("setup_worker.sh", "--no-install", "--run-id-file", str(tmp / "none.env")),
                   "setup_worker", "no RUN_ID")


@NEEDS_REDIS
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (needed to make a test cert)")
def test_controller_tls_port_serves_tls_with_the_password(ctl):
    tmp, port, args = ctl
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls_port = free_port()
    proc = sh("setup_controller.sh", *args, "--tls-port", str(tls_port), "--tls-cert", str(cert),
              "--tls-key", str(key))
    assert proc.returncode == 0, proc.stderr
    pw = (tmp / "pass").read_text().strip()
    r = redis.Redis(host="127.0.0.1", port=tls_port, password=pw, ssl=True, ssl_ca_certs=str(cert))
    assert r.ping()
    with pytest.raises(redis.ConnectionError):  # plain text on the TLS port fails
        redis.Redis(port=tls_port, password=pw, socket_timeout=2).ping()
