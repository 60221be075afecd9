"""Tasks in containers (docs/containers.md): the runtime's argv from the binding (pure), profiles with a container,
and a real ffmpeg task in a real podman container measured from the container's cgroup.

The real tests need podman + runc and the image ``tools/build_container_image.sh ffmpeg`` builds from Debian's
archive (once, ~1 min, cached by podman); where no container can start they are skipped with the runtime's message.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import REPO
from test_node_helpers import FFMPEG_Q, event_of, node_env, run_adapter, sample_rows, start_collector, stop_collector
from tracekit.core.errors import BadInput, UsageError
from tracekit.node import container as ctr
from tracekit.node import procfs
from tracekit.trace import audit, cts

IMAGE = ctr.FFMPEG_IMAGE
HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---- pure ----


def test_runtime_argv_carries_the_binding_as_the_runtimes_own_flags():
    spec = ctr.ContainerSpec("podman", IMAGE, "256m")
    argv = ctr.runtime_argv(spec, name="tk-x", cidfile="/tmp/c/cid", cgroup_parent="/tracekit/x", cpuset="0-1",
                            cpu_shares=2048, quota_us=150000, mounts=[("/in", True), ("/out", False)],
                            argv=["ffmpeg", "-i", "/in/a.mp4"])
    assert argv[:7] == ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    joined = " ".join(argv)
    for flag in ("run --rm --pull never --init",
                 "--cidfile /tmp/c/cid", "--cgroup-parent /tracekit/x", "--network none",
                 "--cpuset-cpus 0-1", "--cpu-shares 2048", "--cpu-period 100000 --cpu-quota 150000",
                 "--memory 256m", "--volume /in:/in:ro", "--volume /out:/out:rw",
                 "--ulimit nofile=1024:1024"):
        assert flag in joined, flag
    assert argv[-4:] == [IMAGE, "ffmpeg", "-i", "/in/a.mp4"], "the image, then the task's argv unchanged"
    docker = ctr.runtime_argv(ctr.ContainerSpec("docker", IMAGE), name="n", cidfile="c", cgroup_parent="/p",
                              cpuset=None, cpu_shares=None, quota_us=None, mounts=[], argv=["true"])
    assert docker[:3] == ["docker", "run", "--rm"] and "--cpuset-cpus" not in docker and "runc" not in docker


@pytest.mark.parametrize("bad,why", [
    ({"image": "-v/:/host"}, "image"), ({"image": "a b"}, "image"), ({"runtime": "lxc", "image": IMAGE}, "runtime"),
    ({"image": IMAGE, "memory": "lots"}, "memory"), ({"image": IMAGE, "privileged": True}, "unknown"), ("x", "object"),
])
def test_container_spec_is_validated(bad, why):
    with pytest.raises(UsageError, match=why):
        ctr.check_spec(bad)


def test_profile_with_a_container_passes_it_to_the_adapter_environment():
    from tracekit.control.profiles import check_profile

    p = check_profile("boxed", {"app": "ffmpeg-synth", "cpu_units": 1, "container": {"image": IMAGE}})
    assert p["container"] == {"runtime": "podman", "image": IMAGE, "memory": None}
    assert ctr.env_for_profile(p) == {ctr.ENV_RUNTIME: "podman", ctr.ENV_IMAGE: IMAGE}
    assert ctr.env_for_profile(check_profile("plain", {"app": "ffmpeg-synth", "cpu_units": 1})) == {}
    with pytest.raises(BadInput, match="boxed.*image"):
        check_profile("boxed", {"app": "ffmpeg", "cpu_units": 1, "container": {"image": "--privileged"}})
    assert ctr.spec_from_env({ctr.ENV_IMAGE: IMAGE, ctr.ENV_MEMORY: "1g"}) == ctr.ContainerSpec("podman", IMAGE, "1g")
    assert ctr.spec_from_env({}) is None


# ---- real ----


def build_image(kind: str) -> str:
    """The image of ``tools/build_container_image.sh kind`` (built once, then cached), or skip with the reason."""
    r = subprocess.run(["bash", str(REPO / "tools" / "build_container_image.sh"), kind], capture_output=True,
                       text=True, timeout=900, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        pytest.skip(f"cannot build the {kind} image: {lines[-1] if lines else r.returncode}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ffmpeg_image():
    image = build_image("ffmpeg")
    assert image == ctr.FFMPEG_IMAGE, "tools/build_container_image.sh and container.FFMPEG_IMAGE agree"
    why = ctr.unavailable_reason("podman", image)
    if why:
        pytest.skip(why)
    return image


def test_ffmpeg_task_in_a_real_container_is_measured_from_its_cgroup(run_env, ffmpeg_image, tmp_path):
    """Acceptance: a batch ffmpeg task inside a podman container has a CTS invocation with its container id and
    image, samples over its run, and an exact CPU total from the container's cgroup that the samples agree with."""
    env = node_env(run_env, PROC_INTERVAL_MS="100")
    out = tmp_path / "outputs" / "o.mp4.tmp"
    out.parent.mkdir(parents=True, exist_ok=True)
    start_collector(env)
    try:
        r = run_adapter(env, FFMPEG_Q + ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=8",
                                         "-c:v", "libx264", "-preset", "medium", "-threads", "1", "-f", "mp4",
                                         str(out)],
                        wrapper="ffmpeg_wrapper.py", TRACE_ID="box1", TC_BINDING="exclusive", TC_CPUSET="0",
                        TC_OUTPUT_TMP=str(out), TC_OUTPUT=str(out), TC_CONTAINER_IMAGE=ffmpeg_image,
                        TC_CONTAINER_MEMORY="512m")
    finally:
        stop_collector(env)
    assert r.returncode == 0, r.stderr
    ev = event_of(env, "box1")
    assert HEX64.match(ev["container_id"] or ""), ev
    assert ev["container_image"] == ffmpeg_image and ev["binding_mechanism"] == "podman" and ev["cpuset"] == "0"
    assert ev["cg_cpu_us"] > 500_000, "ffmpeg's CPU is in the container's cgroup, not in the runtime client"
    assert ev["bytes_out"] > 0 and out.exists()
    assert procfs.container_id(ev["pid"]) is None  # the client is gone (and ran on the host anyway)
    assert len(sample_rows(env, "box1")) >= 10
    res = cts.parse_run(run_env["TRACEKIT_LOGS"] + "/" + env["RUN_ID"])
    inv = [i for i in res.invocations if i["trace_id"] == "box1"][0]
    assert (inv["container_id"], inv["container_image"], inv["status"]) == (ev["container_id"], ffmpeg_image, "ok")
    assert inv["cpu_ms"] == int(round(ev["cg_cpu_us"])) / 1000, "the exact total is the container cgroup's"
    key = ("n1", "box1", 1)
    assert res.cpu_source[key] == "cgroup"
    st = res.stats[key]
    assert st.rows >= 10 and st.samples_used >= 10
    exact = res.exact_us[key]
    assert exact - st.last_sampled_us <= 0.10 * exact, "the samples cover the run: little CPU after the last one"
    rows = [json.loads(x) for x in (res.out_dir / "proc_metrics.jsonl").read_text().splitlines()]
    mine = [x for x in rows if x["trace_id"] == "box1"]
    assert mine and all(x["container_id"] == ev["container_id"] for x in mine)
    assert round(sum(x["cpu_ms"] for x in mine) * 1000) == exact
    assert audit.check_cpu(res).verdict == audit.PASS
    # nothing left behind: no container, no cgroup
    assert subprocess.run(["podman", *ctr.PODMAN_GLOBAL, "container", "exists", ev["container_id"]]).returncode == 1
    name = f"{env['RUN_ID']}.n1.box1.a1"
    assert not any(p.is_dir() for p in ctr.cgroupfs.CGROUP_ROOT.glob(f"*/tracekit/{name}"))


def test_worker_runs_a_container_profile_through_the_runtime(run_env, ffmpeg_image, tmp_path, monkeypatch,
                                                             redis_client):
    """A profile with a ``container``: the worker hands it to the adapter (TC_CONTAINER_*), the task runs in the
    image, its output is renamed into place after the accepted completion, the invocation names the container."""
    from conftest import Daemons, push, task_payload, wait_for, with_profiles
    from tracekit.core import paths

    env = with_profiles(run_env, tmp_path, monkeypatch, {
        "boxsynth": {"app": "ffmpeg-synth", "cpu_units": 1, "threads": 1, "scale": "320x240", "codec": "libx264",
                     "preset": "veryfast", "crf": 30, "seconds": 1.0,
                     "container": {"runtime": "podman", "image": ffmpeg_image, "memory": "256m"}}})
    d = Daemons(env, tmp_path)
    try:
        d.worker("cw1", "--cpu-binding", "exclusive", "--exit-when-idle")
        d.scheduler()
        push(redis_client, task_payload("bx1", "boxsynth", output="bx1.mp4"))
        wait_for(lambda: redis_client.hlen("done") + redis_client.hlen("failed") == 1, timeout=90)
        assert redis_client.hexists("done", "bx1"), redis_client.hgetall("failed")
        out = paths.outputs_root() / "bx1.mp4"
        assert wait_for(out.exists, timeout=10), "renamed by the worker once the completion was accepted"
    finally:
        d.close()
    ev = event_of(node_env(env, "cw1"), "bx1")
    assert ev["status"] == "ok" and HEX64.match(ev["container_id"] or "") and ev["container_image"] == ffmpeg_image
    assert ev["binding_mechanism"] == "podman" and ev["cpuset"] and ev["cg_cpu_us"] > 0
    assert ev["argv"][0] == "ffmpeg", "the task's argv is recorded, not the runtime's"
    assert out.stat().st_size > 0


def test_missing_image_fails_the_task_with_the_runtimes_message(run_env, ffmpeg_image):
    """An image that is not on the node: the runtime refuses at once (no registry wait), the task fails with its
    message, nothing is left behind."""
    env = node_env(run_env)
    r = run_adapter(env, ["true"], TRACE_ID="nobox", TC_CONTAINER_IMAGE="localhost/tracekit-no-such-image:x",
                    timeout=120)
    assert r.returncode == 125, r.stderr
    ev = event_of(env, "nobox")
    assert ev["status"] == "failed" and "no-such-image" in ev["error"] and ev["container_id"] is None
    assert not any(p.is_dir() for p in ctr.cgroupfs.CGROUP_ROOT.glob(f"*/tracekit/{env['RUN_ID']}.n1.nobox.a1"))


def test_container_stops_with_a_killed_adapter(run_env, ffmpeg_image):
    """kill -9 of the adapter: its runtime client gets SIGTERM (PR_SET_PDEATHSIG) and forwards it, so the container
    (a child of the runtime's monitor, not of the adapter) stops too: no unmeasured orphan."""
    from test_node_helpers import sentinels, start_adapter, wait_for

    env = node_env(run_env)
    p = start_adapter(env, ["sleep", "60"], TRACE_ID="boxorph", TC_CONTAINER_IMAGE=ffmpeg_image)
    name = f"tk-{env['RUN_ID']}.n1.boxorph.a1"

    def running() -> bool:
        r = subprocess.run(["podman", *ctr.PODMAN_GLOBAL, "ps", "--filter", f"name={name}", "--format", "{{.Names}}"],
                           capture_output=True, text=True, timeout=60)
        return name in r.stdout

    try:
        assert wait_for(lambda: sentinels(env).get("boxorph")) and wait_for(running, timeout=60)
    finally:
        p.kill()
        p.communicate(timeout=30)
    assert wait_for(lambda: not running(), timeout=30), "the container must not outlive its adapter"
    assert ctr.remove_parent(name[3:]) == [], "the killed adapter's parent cgroup is empty (removed here)"
