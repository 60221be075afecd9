"""The shared binding through ``systemd-run`` scopes, for real (docs/containers.md, "systemd-run, tested"): a worker
and its adapters run inside a podman container whose PID 1 is systemd; the scheduler and Redis stay on the host.

Checked in systemd's own view (``systemctl show``): one scope per task with the CPUWeight the worker computed
(cpuweight-per-vcpu x cpu_units) and the max-min CPUQuota (``binding.fair_quotas``), updated as tasks start and end;
the exec events record ``systemd-run``. On this hybrid-cgroup host the scopes are not attached to the cpu
controller, so the kernel's enforcement is not checked here (docs/containers.md says where it is).

The container sees the repository and the test's folders at their own paths, and the interpreter of the host's
venv (``sys.base_prefix``, when it is not the image's /usr: the image's python3 is Debian bookworm's, the same as a
venv made from /usr/bin/python3 on a bookworm host).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, TOOLS, Daemons, push, task_payload, wait_for, with_profiles
from test_container import build_image
from tracekit.core import paths
from tracekit.node import binding
from tracekit.node import container as ctr

PODMAN = ["podman", *ctr.PODMAN_GLOBAL]
PROFILES = {"nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 0.2}}
NODE = "sd1"
WEIGHT_PER_VCPU = 150


def _exec(box: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, "exec", box, *cmd], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def systemd_box(tmp_path_factory):
    """A running container whose PID 1 is systemd (state running or degraded), or skip with the reason."""
    image = build_image("systemd")
    assert image == ctr.SYSTEMD_IMAGE, "tools/build_container_image.sh and container.SYSTEMD_IMAGE agree"
    why = ctr.unavailable_reason("podman", image)
    if why:
        pytest.skip(why)
    name = f"tk-systemd-{uuid.uuid4().hex[:8]}"
    mounts = [str(REPO), str(tmp_path_factory.getbasetemp())]
    if not sys.base_prefix.startswith("/usr"):
        mounts.append(sys.base_prefix)  # e.g. pyenv: the venv's interpreter lives there
    vols = [a for m in dict.fromkeys(mounts) for a in ("--volume", f"{m}:{m}")]
    r = subprocess.run([*PODMAN, "run", "-d", "--name", name, "--systemd=always", "--network", "host",
                        *ctr.PODMAN_RUN, *vols, image, "/sbin/init"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"podman could not start a systemd container: {r.stderr.strip().splitlines()[-1:]}")
    try:
        state = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and state not in ("running", "degraded"):
            state = _exec(name, "systemctl", "is-system-running").stdout.strip()
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            pytest.skip(f"systemd in the container did not come up: {state!r}")
        probe = _exec(name, sys.executable, "-c",
                      "import tracekit.node.binding as b; print(b.detect_shared_mechanism())")
        if probe.returncode != 0 or probe.stdout.strip() != "systemd-run":
            why = (probe.stderr or probe.stdout).strip()[-200:]
            pytest.skip(f"the host's venv does not run in the container: {why}")
        yield name
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)


_PROP = re.compile(r"^(Id|CPUWeight|CPUQuotaPerSecUSec)=(.*)$")


def _poll_scopes(box: str, out: Path, stop: Path) -> subprocess.Popen:
    """In the container, every 50 ms: the tracekit scopes' CPUWeight and CPUQuota in systemd's view, as
    ``<ms> Id=... CPUWeight=... CPUQuotaPerSecUSec=...`` lines."""
    script = (f"while [ ! -e {stop} ]; do for u in $(systemctl list-units --type=scope --plain --no-legend "
              f"'tracekit-*' | cut -d' ' -f1); do echo $(date +%s%3N) $(systemctl show \"$u\" -p Id -p CPUWeight "
              f"-p CPUQuotaPerSecUSec); done; sleep 0.05; done > {out}")
    return subprocess.Popen([*PODMAN, "exec", box, "sh", "-c", script], stdin=subprocess.DEVNULL)


def _quota_pct(text: str) -> float | None:
    """systemd's CPUQuotaPerSecUSec (``670ms``, ``1s``, ``infinity``) as % of one CPU."""
    if text == "infinity":
        return None
    m = re.fullmatch(r"([0-9.]+)(ms|s|us)", text)
    assert m, text
    scale = {"s": 100.0, "ms": 0.1, "us": 0.0001}[m.group(2)]
    return round(float(m.group(1)) * scale, 3)


def test_shared_binding_through_systemd_run_scopes(systemd_box, run_env, tmp_path, monkeypatch, redis_client):
    """Acceptance: a worker with --cpu-binding shared inside a systemd container runs each task in its own
    scope, with the worker's weight and max-min quotas, re-applied as tasks start and end."""
    env = with_profiles(run_env, tmp_path, monkeypatch, PROFILES)
    rid = env["RUN_ID"]
    names = {t: binding.scope_unit_name(binding.task_cgroup_name(rid, NODE, t, 1)) for t in ("L1", "L2", "S3")}
    d = Daemons(env, tmp_path)
    poll_out, stop = tmp_path / "scopes.txt", tmp_path / "stop-poll"
    poller = _poll_scopes(systemd_box, poll_out, stop)
    # the worker in the container: non-secret settings by value, the password by name (taken from this
    # process's environment by podman, never on a command line)
    plain = {k: env[k] for k in ("RUN_ID", "TRACEKIT_LOGS", "TRACEKIT_INPUTS", "TRACEKIT_OUTPUTS",
                                 "TRACEKIT_REDIS_URL", "TRACEKIT_PROFILES", "PYTHONPATH")}
    sets = [a for k, v in plain.items() for a in ("--env", f"{k}={v}")]
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [*PODMAN, "exec", *sets, "--env", "TRACEKIT_REDIS_PASSWORD", systemd_box, sys.executable,
             str(TOOLS / "scheduler" / "worker.py"), "--node-id", NODE, "--cpu-binding", "shared",
             "--capacity-units", "3", "--cpuweight-per-vcpu", str(WEIGHT_PER_VCPU), "--exit-when-idle"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: redis_client.zscore("nodes", NODE) is not None, timeout=30)
        d.scheduler()
        # two long tasks, then a short one: quotas (2 cores = 200 %) go 100 -> 100,100 -> 67 x 3 -> 100,100
        push(redis_client, task_payload("L1", params={"seconds": 5}), task_payload("L2", params={"seconds": 5}))
        wait_for(lambda: redis_client.llen(f"running:{NODE}") == 2, timeout=20)
        time.sleep(0.5)
        push(redis_client, task_payload("S3", params={"seconds": 1.5}))
        wait_for(lambda: redis_client.hlen("done") == 3, timeout=60)
        assert worker.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-2000:]
    finally:
        stop.touch()
        if worker.poll() is None:
            worker.kill()
        poller.wait(timeout=30)
        d.close()
    seen: dict[str, list[tuple[int, int, float | None]]] = {}
    for line in poll_out.read_text().splitlines():
        ts, *props = line.split()
        kv = dict(m.groups() for p in props if (m := _PROP.match(p)))
        if "Id" in kv and kv.get("CPUWeight", "").isdigit():  # (a scope being stopped has none: "[not set]")
            seen.setdefault(kv["Id"], []).append((int(ts), int(kv["CPUWeight"]),
                                                  _quota_pct(kv["CPUQuotaPerSecUSec"])))
    assert set(names.values()) <= set(seen), f"one scope per task: {sorted(seen)}"
    for unit in names.values():
        assert {w for _, w, _ in seen[unit]} == {WEIGHT_PER_VCPU}, "the worker's CPUWeight (per vcpu x units)"
    box_id = subprocess.run([*PODMAN, "inspect", "--format", "{{.Id}}", systemd_box], capture_output=True,
                            text=True, timeout=60).stdout.strip()
    evs = [json.loads(x) for x in paths.events_path(rid, NODE).read_text().splitlines()]
    ex = {e["trace_id"]: e for e in evs if e["kind"] == "exec"}
    assert set(ex) == {"L1", "L2", "S3"}
    share3 = round(200 / 3)  # systemd-run / set-property get whole percents
    l1 = seen[names["L1"]]
    before = [q for ts, _, q in l1 if ts < ex["S3"]["ts_start"] - 100]
    during = [q for ts, _, q in l1 if ex["S3"]["ts_start"] + 300 < ts < ex["S3"]["ts_end"] - 100]
    after = [q for ts, _, q in l1 if ex["S3"]["ts_end"] + 300 < ts < ex["L1"]["ts_end"] - 100]
    assert before and set(before) == {100.0}, f"L1 with one other task: all it asks (1 unit = 100 %): {before}"
    assert during and set(during) == {share3}, f"L1 while three tasks share two cores: {during}"
    assert after and set(after) == {100.0}, f"L1 back to 100 % once S3 ended: {after}"
    s3 = {q for ts, _, q in seen[names["S3"]] if ex["S3"]["ts_start"] + 300 < ts < ex["S3"]["ts_end"] - 100}
    assert s3 == {share3}, s3
    # scopes are stopped with their task (systemd in a container may never learn that one emptied)
    for unit in names.values():
        assert max(ts for ts, _, _ in seen[unit]) < ex[unit.split(".")[-3]]["ts_end"] + 5000, unit
    left = _exec(systemd_box, "systemctl", "list-units", "--plain", "--no-legend", "tracekit-*").stdout
    assert rid not in left, left
    for e in ex.values():
        assert (e["binding"], e["binding_mechanism"], e["status"]) == ("shared", "systemd-run", "ok")
        assert e["cpu_weight"] == WEIGHT_PER_VCPU
        assert e["container_id"] == box_id, "the collector's parser finds the node's own container"
    # each task starts with the max-min quota the worker computed with it running (TC_CPU_QUOTA_PCT)
    assert [ex[t]["cpu_quota_pct"] for t in ("L1", "L2", "S3")] == pytest.approx([100, 100, 200 / 3], abs=0.01)
