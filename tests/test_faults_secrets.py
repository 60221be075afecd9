"""Secrets and boundaries after a real run over TLS (rediss://): the Redis password is in no process's command
line at any moment of the run, and in no file under the run's logs, the outputs or the exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import TOOLS, run_script
from tracekit.cluster.redis_server import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (needed for a test cert)"),
]
PROFILES = {"synth": {"app": "ffmpeg-synth", "cpu_units": 1, "threads": 1, "scale": "160x120", "codec": "libx264",
                      "preset": "ultrafast", "crf": 40, "seconds": 0.3}}


@pytest.fixture
def tls_redis(tmp_path):
    """A private redis-server serving only TLS (plain port off), password from its config file (never argv)."""
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    password = f"pw-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    conf = d / "redis.conf"
    conf.write_text(f"bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
                    f"tls-auth-clients no\nrequirepass {password}\nsave \"\"\nappendonly no\ndir {d}\n")
    conf.chmod(0o600)
    proc = subprocess.Popen(["redis-server", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password, ssl=True, ssl_ca_certs=str(cert),
                         decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                proc.kill()
                pytest.skip(f"this redis-server cannot serve TLS: {out[-300:]}")
            time.sleep(0.05)
    yield {"url": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", "port": port, "password": password,
           "client": client}
    proc.terminate()
    proc.wait(10)


def scan_cmdlines(secret: str, stop: threading.Event, seen: dict) -> None:
    """Every process on the machine, every 20 ms: does the secret appear in its command line?"""
    needle = secret.encode()
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            seen["scanned"] = seen.get("scanned", 0) + 1
            if b"tools/" in cmd:
                seen.setdefault("ours", set()).add(cmd.replace(b"\0", b" ")[:120])
            if needle in cmd:
                seen.setdefault("leaks", []).append(cmd.replace(b"\0", b" ").decode(errors="replace"))
        time.sleep(0.02)


def test_password_never_in_argv_logs_outputs_or_exports_over_tls(tls_redis, tmp_path):
    pw = tls_redis["password"]
    pw_file = tmp_path / "redis.pass"
    pw_file.write_text(pw + "\n")
    pw_file.chmod(0o600)
    prof = tmp_path / "profiles.json"
    prof.write_text(json.dumps(PROFILES))
    rid = f"sec{uuid.uuid4().hex[:6]}"
    logs, outputs, inputs = tmp_path / "logs", tmp_path / "outputs", tmp_path / "inputs"
    for p in (logs, outputs, inputs):
        p.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(RUN_ID=rid, NODE_ID="s1", TIME_SYNC="0", PYTHONPATH=str(TOOLS), TRACEKIT_LOGS=str(logs),
               TRACEKIT_OUTPUTS=str(outputs), TRACEKIT_INPUTS=str(inputs), TRACEKIT_PROFILES=str(prof),
               TRACEKIT_REDIS_URL=tls_redis["url"], TRACEKIT_REDIS_PASSWORD_FILE=str(pw_file), PROC_INTERVAL_MS="100")
    seen: dict = {}
    stop = threading.Event()
    spy = threading.Thread(target=scan_cmdlines, args=(pw, stop, seen), daemon=True)
    spy.start()
    daemons = []
    try:
        assert run_script("collect_sys.py", "start", env=env, timeout=30).returncode == 0
        daemons.append(subprocess.Popen([sys.executable, str(TOOLS / "scheduler/worker.py"), "--capacity-units", "2",
                                         "--exit-when-idle"], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen([sys.executable, str(TOOLS / "scheduler/scheduler_central.py")], env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        d = run_script("scheduler/dispatcher.py", "--inputs", str(inputs), "--mix", "synth=1", "--total", "6",
                       "--seed", "1", "--wait", "--no-progress", env=env, timeout=90)
        assert d.returncode == 0 and "done 6 / failed 0" in d.stdout, d.stdout + d.stderr
        st = run_script("scheduler/status.py", env=env)
        assert st.returncode == 0, st.stderr
        worker_out = daemons[0].communicate(timeout=30)[0].decode(errors="replace")
        daemons[1].terminate()
        sched_out = daemons[1].communicate(timeout=30)[0].decode(errors="replace")
    finally:
        run_script("collect_sys.py", "stop", env=env, timeout=30)
        stop.set()
        spy.join()
        for p in daemons:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert tls_redis["client"].hlen("done") == 6  # the whole run went over TLS
    plain = dict(env, TRACEKIT_REDIS_URL=f"redis://127.0.0.1:{tls_redis['port']}/0")  # plain text to a TLS port
    p = run_script("scheduler/status.py", env=plain, timeout=30)
    assert p.returncode == 2 and "cannot reach Redis" in p.stderr and len(p.stderr.strip().splitlines()) == 1

    # traces and exports, as a user makes them after the run
    for script, args in (("parse_cts.py", ["--run-id", rid, "--no-plots", "--quiet"]),
                         ("export_opendc.py", ["--input", str(logs / rid), "--output", str(logs / rid / "opendc")]),
                         ("export_perfetto.py", ["--input", str(logs / rid), "--output", str(tmp_path / "tl.json")])):
        r = run_script(script, *args, env=env, timeout=120)
        assert r.returncode == 0, (script, r.stdout, r.stderr)
        assert pw not in r.stdout + r.stderr

    assert seen.get("scanned", 0) > 100 and seen.get("ours"), "the spy saw the run's processes"
    assert not seen.get("leaks"), f"password in a command line: {seen['leaks'][:2]}"
    assert pw not in worker_out + sched_out
    files = [f for root in (logs / rid, outputs, tmp_path / "tl.json") for f in
             ([root] if root.is_file() else root.rglob("*")) if f.is_file()]
    assert len(files) > 20 and any(f.suffix == ".parquet" for f in files) and any(f.suffix == ".mp4" for f in files)
    leaked = [str(f) for f in files if pw.encode() in f.read_bytes()]
    assert not leaked, f"password found in {leaked}"
    # the tasks (adapter + ffmpeg) never got the password, not even in their environment
    ev = [json.loads(x) for x in (logs / rid / "s1" / "events.jsonl").read_text().splitlines()]
    assert len([e for e in ev if e["kind"] == "exec" and e["status"] == "ok"]) == 6


def test_a_task_never_gets_the_password_in_its_environment(tls_redis, tmp_path):
    """Password given by environment to the worker: the task's processes must not inherit it."""
    pw = tls_redis["password"]
    prof = tmp_path / "profiles.json"
    prof.write_text(json.dumps({"envdump": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"],
                                            "seconds": 1.0}}))
    rid = f"sec{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(RUN_ID=rid, NODE_ID="s2", PYTHONPATH=str(TOOLS), TRACEKIT_LOGS=str(tmp_path / "logs"),
               TRACEKIT_OUTPUTS=str(tmp_path / "out"), TRACEKIT_INPUTS=str(tmp_path), TRACEKIT_PROFILES=str(prof),
               TRACEKIT_REDIS_URL=tls_redis["url"], TRACEKIT_REDIS_PASSWORD=pw)
    w = subprocess.Popen([sys.executable, str(TOOLS / "scheduler/worker.py"), "--capacity-units", "1",
                          "--exit-when-idle"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    s = subprocess.Popen([sys.executable, str(TOOLS / "scheduler/scheduler_central.py")], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d = run_script("scheduler/dispatcher.py", "--inputs", str(tmp_path), "--mix", "envdump=1", "--total", "1",
                       env=env, timeout=30)
        assert d.returncode == 0, d.stderr
        task_procs: list = []
        deadline = time.monotonic() + 15
        while not task_procs and time.monotonic() < deadline:
            for p in psutil.process_iter():
                try:
                    e = p.environ()
                except psutil.Error:
                    continue
                if e.get("RUN_ID") == rid and e.get("TRACE_ID"):
                    task_procs.append((p, e))
            time.sleep(0.05)
        assert task_procs, "the task's processes were not seen"
        for p, e in task_procs:
            assert pw not in json.dumps(e), f"pid {p.pid} ({p.name()}) inherited the password"
    finally:
        for p in (w, s):
            p.kill()
            p.wait()
