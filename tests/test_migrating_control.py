"""docs/migrating.md, first four sections: every row (an original profile, flag, variable, script or make target) is
run here in its old form and checked to work with the same meaning or to fail with one line naming its replacement.

``CHECKS`` maps the first code span of each table row to its check; ``test_every_row_has_a_check`` keeps the doc
and this table equal. Checks that share a setup (one worker run with many flags, one direct dispatch) share it
through ``Scenarios`` (computed once per module, each with its own run id and folders).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, TOOLS, run_script, wait_for, with_profiles
from tracekit.core.jsonl import read_jsonl
from tracekit.core.keys import Keys

DOC = REPO / "docs" / "migrating.md"
SECTIONS = ("## Workload and profiles", "## Scripts and flags", "## Environment variables", "## Make targets")
K = Keys()
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg/ffprobe not installed (apt-get install -y ffmpeg)")
PROFILES = {
    "nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 0.1},
    "nap2": {"app": "command", "cpu_units": 2, "argv": ["sleep", "{seconds}"], "seconds": 0.1},
    "long": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 1.5},
    # what the adapter received from the worker: the binding variables, written to the task's output
    "envdump": {"app": "command", "cpu_units": 1, "needs_input": False,
                "argv": ["sh", "-c", 'env | grep "^TC_" > "$1"', "sh", "{output}"]},
}
CLIPS = {"a.mp4": 1.2, "b.mp4": 0.4, "c.mp4": 0.8, "d.mp4": 0.6}  # name -> seconds


# ---- the original's command construction (tools/scheduler/worker.py run_task + dispatcher.py profile_from_name),
# transcribed as documented in docs/migrating.md "Workload and profiles" ----

ORIGINAL_PROFILES = {
    "fast1080p": {"scale": "1920:1080", "vcodec": "h264", "preset": "fast", "crf": 28, "vthreads": 2, "fthreads": 2,
                  "cpu_units": 2},
    "medium480p": {"scale": "854:480", "vcodec": "h264", "preset": "medium", "crf": 28, "vthreads": 2,
                   "fthreads": 2, "cpu_units": 2},
    "hevc1080p": {"scale": "1920:1080", "vcodec": "hevc", "preset": "medium", "crf": 28, "vthreads": 4,
                  "fthreads": 4, "cpu_units": 4},
    "light1c": {"scale": "854:480", "vcodec": "h264", "preset": "veryfast", "crf": 28, "vthreads": 1,
                "fthreads": 1, "cpu_units": 1},
}


def original_ffmpeg_args(task: dict) -> list[str]:
    """The original worker's ``base_cmd`` for a task dict (its field names)."""
    vcodec = str(task.get("vcodec", "h264")).lower()
    cmd = ["-i", task["input"], "-vf", f"scale={task.get('scale', '1280:720')}",
           "-c:v", "libx265" if vcodec in ("hevc", "h265") else "libx264",
           "-preset", str(task.get("preset", "veryfast")), "-crf", str(task.get("crf", 28))]
    vthreads, fthreads = str(task.get("vthreads", "")), str(task.get("fthreads", ""))
    if vthreads.isdigit():
        cmd += ["-threads:v", vthreads]
    if fthreads.isdigit():
        cmd += ["-filter_threads", fthreads]
    return cmd + ["-c:a", "copy", task["output"]]


def ours(profile: str, tmp_path: Path, monkeypatch, params: dict | None = None) -> tuple[list, dict, Path]:
    """Our argv for a task of ``profile`` on input x.mp4: (argv, profile, the tmp output path)."""
    from tracekit.control.profiles import load_profiles
    from tracekit.control.task import build_command, parse_task

    monkeypatch.delenv("FFMPEG_BIN", raising=False)
    (tmp_path / "in").mkdir(exist_ok=True)
    raw = json.dumps({"trace_id": "t1", "profile": profile, "ts_enqueue": 1, "input": "x.mp4", "output": "o.mp4",
                      "params": params or {}})
    cmd = build_command(parse_task(raw), tmp_path / "in", tmp_path / "out")
    return cmd.argv, load_profiles()[profile], cmd.tmp_output_path


def compare_argv(mine: list, original: list) -> None:
    """Argument by argument, with the index of the first difference in the message."""
    for i, (a, b) in enumerate(zip(mine, original)):
        assert a == b, f"argument {i}: ours {a!r}, the original {b!r}\nours: {mine}\noriginal: {original}"
    assert len(mine) == len(original), f"ours has {len(mine)} arguments, the original {len(original)}"


def check_original_profile(name):
    def check(request):
        tmp_path, monkeypatch = request.getfixturevalue("tmp_path"), request.getfixturevalue("monkeypatch")
        argv, prof, tmp = ours(name, tmp_path, monkeypatch)
        assert argv[:6] == ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        orig = dict(ORIGINAL_PROFILES[name], input=str(tmp_path / "in" / "x.mp4"), output=str(tmp))
        compare_argv(argv[6:], original_ffmpeg_args(orig))
        assert prof["cpu_units"] == ORIGINAL_PROFILES[name]["cpu_units"]
    return check


def check_legacy_profile(request):
    """Without --mix the original's task had scale/preset/crf only (no thread flags); --scale etc. override."""
    tmp_path, monkeypatch = request.getfixturevalue("tmp_path"), request.getfixturevalue("monkeypatch")
    argv, prof, tmp = ours("legacy720p", tmp_path, monkeypatch)
    compare_argv(argv[6:], original_ffmpeg_args({"input": str(tmp_path / "in" / "x.mp4"), "output": str(tmp)}))
    argv, _, tmp = ours("legacy720p", tmp_path, monkeypatch, {"scale": "640x360", "preset": "fast", "crf": 30})
    compare_argv(argv[6:], original_ffmpeg_args({"input": str(tmp_path / "in" / "x.mp4"), "output": str(tmp),
                                                 "scale": "640:360", "preset": "fast", "crf": 30}))
    assert prof["cpu_units"] == 1
    # and the dispatcher makes them: one per input in file-name order, round-robin in direct mode
    q = Scenarios.get(request).direct("per-file", "--nodes", "n1,n2")
    assert [t["input"] for t in q["n1"]] == ["a.mp4", "c.mp4"] and [t["input"] for t in q["n2"]] == ["b.mp4", "d.mp4"]
    assert {t["profile"] for ts in q.values() for t in ts} == {"legacy720p"}


# ---- scenarios: real runs shared by several rows ----


class Scenarios:
    """Runs made once per module in their own folders; results are plain data."""

    _inst = None

    def __init__(self, redis_server, base: Path) -> None:
        self.redis_server, self.base = redis_server, base
        self.cache: dict = {}
        self.clips = base / "clips"
        self.clips.mkdir()
        if FFMPEG:
            for name, secs in CLIPS.items():
                subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                                f"testsrc2=size=64x48:rate=10:duration={secs}", "-c:v", "libx264", "-preset",
                                "ultrafast", str(self.clips / name)], check=True, timeout=60)

    @classmethod
    def get(cls, request) -> Scenarios:
        if cls._inst is None or cls._inst.redis_server is not request.getfixturevalue("redis_server"):
            cls._inst = Scenarios(request.getfixturevalue("redis_server"),
                                  request.getfixturevalue("tmp_path_factory").mktemp("scen"))
        return cls._inst

    def env(self, name: str) -> dict:
        """A private run: run id, folders, key prefix (so other tests' flushes cannot clash), profiles."""
        d = self.base / name
        for sub in ("logs", "inputs", "outputs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if FFMPEG:
            for clip in self.clips.iterdir():
                if not (d / "inputs" / clip.name).exists():
                    shutil.copy(clip, d / "inputs" / clip.name)
        (d / "profiles.json").write_text(json.dumps(PROFILES))
        env = dict(os.environ, RUN_ID=f"m{uuid.uuid4().hex[:8]}", TRACEKIT_LOGS=str(d / "logs"),
                   TRACEKIT_INPUTS=str(d / "inputs"), TRACEKIT_OUTPUTS=str(d / "outputs"),
                   TRACEKIT_REDIS_URL=self.redis_server.url, TRACEKIT_REDIS_PASSWORD=self.redis_server.password,
                   TRACEKIT_KEY_PREFIX=f"{name}:", TRACEKIT_PROFILES=str(d / "profiles.json"), PYTHONPATH=str(TOOLS),
                   TRACEKIT_LAUNCHER="0")
        env.pop("NODE_ID", None)
        return env

    def client(self):
        return self.redis_server.client()

    def once(self, key, fn):
        """``fn()`` once per module; a failure is kept too (the rows sharing it fail at once, not after a rerun)."""
        if key not in self.cache:
            try:
                self.cache[key] = (True, fn())
            except BaseException as exc:  # noqa: BLE001 (pytest's skip and assertion errors alike)
                self.cache[key] = (False, exc)
        ok, value = self.cache[key]
        if not ok:
            raise value
        return value

    # -- direct dispatch into queues nobody consumes (heartbeats set by hand: the dispatcher's check reads them)
    def direct(self, key: str, *args: str) -> dict:
        def run():
            env = self.env(f"d{len(self.cache)}")
            keys = Keys(env["TRACEKIT_KEY_PREFIX"])
            c = self.client()
            for n in ("n1", "n2"):
                c.set(keys.heartbeat(n), "x", px=120_000)
            p = run_script("scheduler/dispatcher.py", "--inputs", env["TRACEKIT_INPUTS"], "--no-progress", *args,
                           env=env, timeout=60)
            assert p.returncode == 0, p.stderr
            return {n: [json.loads(x) for x in c.lrange(keys.queue(n), 0, -1)] for n in ("n1", "n2")}
        return self.once(("direct", key), run)

    # -- one worker per binding, payloads pushed straight to its queue
    def worker_run(self, binding: str) -> dict:
        def run():
            env = self.env(f"w{binding}")
            keys = Keys(env["TRACEKIT_KEY_PREFIX"])
            c = self.client()
            node = f"w{binding}"
            with open(self.base / f"{node}.log", "w") as log:  # the child keeps its own descriptor
                p = subprocess.Popen([sys.executable, str(TOOLS / "scheduler/worker.py"), "--node-id", node,
                                      "--cpu-binding", binding, "--capacity-units", "8"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: c.exists(keys.heartbeat(node)), 30)
                now = int(time.time() * 1000)

                def pay(tid, prof, **kw):
                    return json.dumps({"trace_id": tid, "profile": prof, "cpu_units": 1, "ts_enqueue": now,
                                       "attempt": 1, "output": f"{tid}.txt", **kw})
                cores = sorted(os.sched_getaffinity(0))
                if binding == "exclusive":
                    raws = [pay("x-long", "long", cpuset=str(cores[0])), pay("x-overlap", "nap", cpuset=str(cores[0])),
                            pay("x-outside", "nap", cpuset="1000"), pay("x-own", "envdump", cpuset=str(cores[-1])),
                            pay("x-auto", "envdump")]
                else:
                    raws = [pay("s-weight", "envdump", cpu_weight=300), pay("s-quota", "envdump", cpu_quota=50),
                            pay("s-unit", "envdump", unit_name="tk-legacy-1.scope"), pay("s-auto", "envdump")]
                c.rpush(keys.queue(node), *raws[:1])
                if binding == "exclusive":  # the long task holds its core while the next ones arrive
                    wait_for(lambda: c.llen(keys.running(node)) == 1, 30)
                c.rpush(keys.queue(node), *raws[1:])
                tids = [json.loads(r)["trace_id"] for r in raws]
                wait_for(lambda: all(c.hexists(keys.done, t) or c.hexists(keys.failed, t) for t in tids), 60)
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
            out = {}
            for t in tids:
                rec = json.loads(c.hget(keys.done, t) or c.hget(keys.failed, t))
                f = Path(env["TRACEKIT_OUTPUTS"]) / f"{t}.txt"
                got = dict(line.split("=", 1) for line in f.read_text().split()) if f.exists() else None
                out[t] = (rec, got)
            return out
        return self.once(("worker", binding), run)


def dispatcher(env: dict, *args: str, timeout: float = 60):
    return run_script("scheduler/dispatcher.py", "--inputs", env["TRACEKIT_INPUTS"], "--no-progress", *args,
                      env=env, timeout=timeout)


def one_line_naming(p, exit_code: int, *words: str) -> None:
    """The process failed with exactly one line on stderr that contains ``words``."""
    assert p.returncode == exit_code, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and not re.match(r"make(\[\d+\])?: \*\*\*", ln)]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---- checks, one per row ----


def check_unknown_profile(request):
    env = Scenarios.get(request).env("unknown")
    one_line_naming(dispatcher(env, "--mix", "other=1"), 2, "unknown profile 'other'", "legacy720p")


def check_pulse(request):
    Scenarios.get(request).once("pulse", lambda: pulse_runs(request))


def pulse_runs(request):
    env = Scenarios.get(request).env("pulse")
    p = dispatcher(env, "--mix", "nap=1", "--total", "3", "--pending", "--pulse-size", "2", "--pulse-interval", "0.4")
    assert p.returncode == 0, p.stderr
    ts = [d["ts_enqueue"] for _, d in read_jsonl(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "dispatch.jsonl")]
    assert len(ts) == 3 and ts[1] - ts[0] >= 900 and ts[2] - ts[1] >= 350, ts  # 1 s apart in a pulse (default)
    env = Scenarios.get(request).env("pulse0")
    p = dispatcher(env, "--mix", "nap=1", "--total", "3", "--pending", "--pulse-size", "2", "--pulse-interval", "0.3",
                   "--pulse-spacing", "0")
    ts = [d["ts_enqueue"] for _, d in read_jsonl(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "dispatch.jsonl")]
    assert p.returncode == 0 and ts[0] == ts[1] and ts[2] - ts[1] >= 250, ts


def check_task_cpuset(request):
    got = Scenarios.get(request).worker_run("exclusive")
    cores = sorted(os.sched_getaffinity(0))
    rec, env = got["x-own"]
    assert rec["status"] == "ok" and env["TC_CPUSET"] == str(cores[-1])
    rec, _ = got["x-outside"]
    assert rec["status"] == "rejected" and "outside this node's cores" in rec["reason"], rec
    if len(cores) > 1:
        rec, _ = got["x-overlap"]
        assert rec["status"] == "rejected" and "overlaps" in rec["reason"] and "x-long" in rec["reason"], rec
    _, env = got["x-auto"]  # without a cpuset of its own: the worker's choice
    assert env["TC_BINDING"] == "exclusive" and int(env["TC_CPUSET"]) in cores


def check_task_shared(field, var, value):
    def check(request):
        rec, env = Scenarios.get(request).worker_run("shared")[f"s-{field}"]
        assert rec["status"] == "ok", rec
        assert env[var] == value, env
        _, auto = Scenarios.get(request).worker_run("shared")["s-auto"]
        assert var not in auto or auto[var] != value
    return check


def check_original_payload(request):
    from tracekit.control import payload

    raw = json.dumps({"input": "inputs/a.mp4", "output": "outputs/a.mp4", "scale": "1280:720", "preset": "veryfast",
                      "crf": 28, "ts_enqueue": 1})
    rule, _, reason = payload.verdict(raw)
    assert rule == "trace_id" and "trace_id missing" in reason


def check_direct_policy(policy, expect):
    def check(request):
        q = Scenarios.get(request).direct(policy, "--policy", policy, "--nodes", "n1,n2", "--batch-size", "4",
                                          "--backlog-limit", "2", "--dribble-interval", "0.05")
        assert {n: sorted(t["input"] for t in ts) for n, ts in q.items()} == expect
    return check


RR = {"n1": ["a.mp4", "c.mp4"], "n2": ["b.mp4", "d.mp4"]}
LPT = {"n1": ["a.mp4", "b.mp4"], "n2": ["c.mp4", "d.mp4"]}  # 1.2+0.4 vs 0.8+0.6 (longest first)


def check_nodes(request):
    q = Scenarios.get(request).direct("nodes-only", "--nodes", "n1,n2")
    assert {n: sorted(t["input"] for t in ts) for n, ts in q.items()} == RR
    env = Scenarios.get(request).env("nodes-dead")
    one_line_naming(dispatcher(env, "--nodes", "n9"), 2, "no live worker", "n9")


def check_legacy_param(flag, value, key, stored):
    def check(request):
        q = Scenarios.get(request).direct(f"param{flag}", "--nodes", "n1,n2", flag, value)
        assert all(t["params"][key] == stored for ts in q.values() for t in ts)
        env = Scenarios.get(request).env("param-mix")
        one_line_naming(dispatcher(env, "--mix", "nap=1", flag, value), 2, "without --mix")
    return check


def central_run(request, key: str, *args: str) -> dict:
    """A central-mode dispatch into q:pending nobody consumes: (dispatch lines, payloads, process)."""
    s = Scenarios.get(request)

    def run():
        env = s.env(key)
        p = dispatcher(env, *(a.replace("OUT", env["TRACEKIT_OUTPUTS"]) for a in args))
        assert p.returncode == 0, p.stderr
        lines = [d for _, d in read_jsonl(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "dispatch.jsonl")]
        keys = Keys(env["TRACEKIT_KEY_PREFIX"])
        return {"lines": lines, "queue": [json.loads(x) for x in s.client().lrange(keys.pending, 0, -1)],
                "env": env, "stderr": p.stderr}
    return s.once(("central", key), run)


def check_central_basic(request):
    r = central_run(request, "basic", "--outputs", "OUT/sub", "--mix", "nap=1,nap2=1", "--total", "4", "--seed", "5")
    assert len(r["queue"]) == 4 and sorted(t["profile"] for t in r["queue"]) == ["nap", "nap", "nap2", "nap2"]
    assert all(t["output"].startswith(f"sub/{r['env']['RUN_ID']}/") for t in r["queue"])
    return r


def check_seed(request):
    a = check_central_basic(request)
    b = central_run(request, "basic2", "--outputs", "OUT/sub", "--mix", "nap=1,nap2=1", "--total", "4", "--seed", "5")
    assert [t["profile"] for t in a["queue"]] == [t["profile"] for t in b["queue"]] and "seed 5" in a["stderr"]


def check_redis_url(request):
    s = Scenarios.get(request)
    env = s.env("url")
    srv = s.redis_server
    url = srv.url + ("&" if "?" in srv.url else "?") + f"password={srv.password}"  # the original's form
    env.pop("TRACEKIT_REDIS_PASSWORD")
    env.pop("TRACEKIT_REDIS_URL")
    p = dispatcher(env, "--mix", "nap=1", "--total", "1", "--redis", url)
    assert p.returncode == 0, p.stderr
    assert srv.password not in p.stderr + p.stdout


def _consumer(client, key: str, stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        seen.append(client.llen(key))
        client.lpop(key)
        time.sleep(0.05)


def feeding_run(request, key: str, *args: str) -> list:
    """A dispatch whose q:pending is consumed by a thread (as a scheduler would); the queue lengths it saw."""
    s = Scenarios.get(request)

    def run():
        env = s.env(key)
        keys = Keys(env["TRACEKIT_KEY_PREFIX"])
        stop, seen = threading.Event(), []
        th = threading.Thread(target=_consumer, args=(s.client(), keys.pending, stop, seen), daemon=True)
        th.start()
        try:
            p = dispatcher(env, "--mix", "nap=1", "--total", "5", *args)
        finally:
            stop.set()
            th.join()
        assert p.returncode == 0, p.stderr
        return seen
    return s.once(("feed", key), run)


def check_fifo(request):
    seen = feeding_run(request, "fifo", "--pending", "--pending-mode", "fifo", "--pending-max", "2", "--batch-size",
                       "2", "--dribble-interval", "0.05")
    assert max(seen) <= 2


def check_drip(request):
    seen = feeding_run(request, "drip", "--drip", "--batch-size", "1", "--dribble-interval", "0.05",
                       "--backlog-limit", "1")
    assert max(seen) <= 1


def check_pending(request):
    r = central_run(request, "pending", "--mix", "nap=1", "--total", "3", "--pending", "--pulse-size", "3",
                    "--pulse-spacing", "0")
    assert len(r["queue"]) == 3 and len({d["ts_enqueue"] for d in r["lines"]}) == 1


def check_pulse_size(request):
    check_pulse(request)


def check_central(*args, refuse: tuple = (), words: tuple = ()):
    def check(request):
        s = Scenarios.get(request)
        env = s.env("central" + uuid.uuid4().hex[:6])
        args_ = [a.replace("REDIS", env["TRACEKIT_REDIS_URL"]) for a in args]
        p = run_script("scheduler/scheduler_central.py", "--exit-when-idle", *args_, env=env, timeout=60)
        assert p.returncode == 0, p.stderr
        if refuse:
            one_line_naming(run_script("scheduler/scheduler_central.py", "--exit-when-idle", *refuse, env=env,
                                       timeout=60), 2, *words)
    return check


def worker_flags(request) -> dict:
    """One worker started with the original's flags (and a task left in its queue), then stopped."""
    s = Scenarios.get(request)

    def run():
        env = s.env("wflags")
        keys = Keys(env["TRACEKIT_KEY_PREFIX"])
        c = s.client()
        out = Path(env["TRACEKIT_OUTPUTS"])
        c.rpush(keys.queue("wf"), json.dumps({"trace_id": "left", "profile": "nap", "cpu_units": 1, "ts_enqueue": 1,
                                              "attempt": 1}))
        procs = []
        for node, extra in (("wf", ["--parallel", "2", "--capacity-units", "3", "--cpuweight-per-vcpu", "150",
                                    "--cpu-binding", "shared", "--clear-queue", "--slots-key", "slots:available"]),
                            ("wr", ["--allocation-ratio", "1.5", "--reset-capacity"])):
            procs.append(subprocess.Popen(
                [sys.executable, str(TOOLS / "scheduler/worker.py"), "--node-id", node, "--outputs", str(out),
                 "--redis", env["TRACEKIT_REDIS_URL"], *extra], env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=open(s.base / f"{node}.err", "w")))  # noqa: SIM115
        try:
            wait_for(lambda: c.exists(keys.heartbeat("wf")) and c.exists(keys.heartbeat("wr")), 30)
            info = {n: c.hgetall(keys.node_info(n)) for n in ("wf", "wr")}
            slots = c.lrange(keys.slots, 0, -1)
            left = json.loads(c.hget(keys.failed, "left") or "{}")
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
        bad = run_script("scheduler/worker.py", "--slots-key", "other:slots", env=env, timeout=60)
        return {"info": info, "slots": slots, "left": left, "bad": bad}
    return s.once("wflags", run)


def check_worker(pred):
    def check(request):
        assert pred(worker_flags(request))
    return check


def wrapper_runs(request) -> dict:
    """The original adapter call, twice: pinned (CPUSET) and shared (CPU_WEIGHT, CPU_QUOTA)."""
    if FFMPEG is None:
        pytest.skip("ffmpeg not installed (apt-get install -y ffmpeg)")
    s = Scenarios.get(request)

    def run():
        env = s.env("wrap")
        clip = Path(env["TRACEKIT_INPUTS"]) / "b.mp4"
        out = {}
        core = str(sorted(os.sched_getaffinity(0))[-1])
        for tag, extra in (("pin", {"CPUSET": core, "TS_ENQUEUE": "1700000000123", "STAGE": "cloud"}),
                           ("share", {"CPU_WEIGHT": "300", "CPU_QUOTA": "150", "UNIT_NAME": "tk-x-1.scope"})):
            dst = Path(env["TRACEKIT_OUTPUTS"]) / f"{tag}.mp4"
            p = subprocess.run([sys.executable, str(TOOLS / "adapters/ffmpeg_wrapper.py"), "-i", str(clip), "-vf",
                                "scale=32:24", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "28", "-threads:v",
                                "1", "-filter_threads", "1", "-c:a", "copy", str(dst)],
                               env=dict(env, NODE_ID="legacy", **extra), capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr[-2000:]
            assert dst.stat().st_size > 0
        evs = [e for _, e in read_jsonl(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "legacy" / "events.jsonl")]
        out["pin"], out["share"] = evs[0], evs[1]
        out["core"] = core
        return out
    return s.once("wrap", run)


def check_wrapper(request):
    ev = wrapper_runs(request)["pin"]
    assert ev["kind"] == "exec" and ev["status"] == "ok" and ev["bytes_in"] > 0 and ev["bytes_out"] > 0
    assert ev["argv"][0] == "ffmpeg" and "-threads:v" in ev["argv"] and uuid.UUID(ev["trace_id"])


def check_env_cpuset(request):
    r = wrapper_runs(request)
    assert r["pin"]["binding"] == "exclusive" and r["pin"]["cpuset"] == r["core"]


def check_env_shared(field, value):
    def check(request):
        ev = wrapper_runs(request)["share"]
        assert ev["binding"] == "shared" and ev[field] == value, ev
    return check


def check_env_unit(request):
    from tracekit.node.adapter import legacy_call
    from tracekit.node.binding import prepare_shared

    _, env = legacy_call(["-i", "a.mp4", "b.mp4"], {"UNIT_NAME": "tk-n-1-0.scope", "RUN_ID": "r"})
    assert env["TC_BINDING"] == "shared" and env["TC_UNIT_NAME"] == "tk-n-1-0.scope"
    b = prepare_shared("r", "n", "t", 1, 100, None, mechanism="systemd-run", unit=env["TC_UNIT_NAME"])
    assert "--unit=tk-n-1-0.scope" in b.argv_prefix
    assert wrapper_runs(request)["share"]["status"] == "ok"


def check_ts_enqueue(request):
    assert wrapper_runs(request)["pin"]["ts_enqueue"] == 1700000000123


def collector_cfg(request, **env):
    from tracekit.node.collector import CollectorConfig

    return CollectorConfig.from_env({"RUN_ID": "r1", "NODE_ID": "n1", **env})


def check_collector(**kw):
    env, want = kw.pop("env"), kw

    def check(request):
        cfg = collector_cfg(request, **env)
        for k, v in want.items():
            got = getattr(cfg, k)
            assert (got.pattern if hasattr(got, "pattern") else got) == v, (k, got)
    return check


def check_ntp_pool(request):
    from tracekit.node import timesync

    monkeypatch, tmp_path = request.getfixturevalue("monkeypatch"), request.getfixturevalue("tmp_path")
    monkeypatch.setenv("NTP_POOL", "ntp.example.org")
    monkeypatch.setenv("TIME_SYNC", "0")
    assert timesync.sync(tmp_path / "ts.log") == "skipped"
    text = (tmp_path / "ts.log").read_text()
    assert "pool=ntp.example.org" in text and "TIME_SYNC=0" in text


def collector_make_run(request) -> dict:
    """make start-collect with the shell collector (USE_PY_COLLECT=0), then make stop-collect STOP_ALL=1."""
    s = Scenarios.get(request)

    def run():
        env = s.env("mcol")
        env.update(NODE_ID="mc1", USE_PY_COLLECT="0", PROC_INTERVAL_MS="100", TIME_SYNC="0")
        start = make(env, "start-collect")
        pidfile = Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "mc1" / "collector.pid"
        wait_for(lambda: pidfile.exists(), 20)
        time.sleep(0.3)
        stop = make(dict(env, STOP_ALL="1", NODE_ID="other"), "stop-collect")
        meta = json.loads((Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "mc1" / "node.json").read_text())
        return {"start": start, "stop": stop, "meta": meta, "pidfile_left": pidfile.exists()}
    return s.once("mcol", run)


def make(env: dict, *targets: str, timeout: float = 120):
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *targets, f"RUN_ID={env['RUN_ID']}"],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def check_make_collect(request):
    r = collector_make_run(request)
    assert r["start"].returncode == 0, r["start"].stderr
    assert "sh-whitelist" in r["start"].stdout


def check_stop_all(request):
    r = collector_make_run(request)
    assert r["stop"].returncode == 0 and "collector of node mc1" in r["stop"].stdout, r["stop"].stdout
    assert not r["pidfile_left"]


def check_make_export_opendc(request):
    from tracekit.cluster import synthlogs
    from tracekit.cluster.synthlogs import SynthSpec

    s = Scenarios.get(request)
    env = s.env("mexp")
    synthlogs.generate(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"], SynthSpec(nodes=1, tasks=4, cores=2, capacity=2))
    p = subprocess.run([sys.executable, str(TOOLS / "parse_cts.py"), "--run-id", env["RUN_ID"]], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = s.base / "mexp" / "opendc_traces"
    p = make(env, "export-opendc", f"OUT={out}")
    assert p.returncode == 0, p.stderr
    assert list(out.rglob("*.parquet")) and f"exported to {out}" in p.stdout


def check_make_clean(request):
    s = Scenarios.get(request)
    env = s.env("mclean")
    run_dir = Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"]
    (run_dir / "n1").mkdir(parents=True)
    (run_dir / "n1" / "events.jsonl").write_text("{}\n")
    p = make(env, "clean")
    assert p.returncode == 0, p.stderr
    assert not run_dir.exists() and "worker: not running" in p.stdout
    p = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "clean", "RUN_ID="], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "nothing deleted" in p.stdout + p.stderr


def check_make_stop(request):
    env = Scenarios.get(request).env("mstop")
    p = make(env, "stop")
    assert p.returncode == 0 and "worker: not running" in p.stdout, p.stdout + p.stderr


def check_make_setup(request):
    assert (REPO / ".venv" / ".tracekit-ready").exists()  # this very suite runs in what `make setup` made
    p = subprocess.run(["make", "-C", str(REPO), "help"], capture_output=True, text=True, timeout=60)
    assert re.search(r"^setup\s", p.stdout, re.M)


def check_make_removed(target, word):
    def check(request):
        env = Scenarios.get(request).env("mgone")
        one_line_naming(make(env, target), 2, f"make {target}: removed", word)
    return check


def check_script(rel, *args, out=""):
    def check(request):
        p = subprocess.run([str(TOOLS / rel) if rel.endswith(".sh") else sys.executable, *([] if rel.endswith(".sh")
                            else [str(TOOLS / rel)]), *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert out in p.stdout + p.stderr
    return check


def check_requirements(request):
    text = (TOOLS / "scheduler" / "requirements.txt").read_text()
    assert "-r ../../requirements.txt" in text  # the project's one list
    text = (REPO / "requirements.txt").read_text()
    assert "redis" in text and "psutil" in text


def check_run_id(request):
    from tracekit.core.errors import UsageError

    assert collector_cfg(request).run_id == "r1"
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.delenv("RUN_ID", raising=False)
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    from tracekit.core import paths

    monkeypatch.setattr(paths, "RUN_ID_FILE", request.getfixturevalue("tmp_path") / "run_id.env")
    with pytest.raises(UsageError, match="no RUN_ID"):
        paths.run_id()


CHECKS = {
    # Workload and profiles
    "fast1080p": check_original_profile("fast1080p"),
    "medium480p": check_original_profile("medium480p"),
    "hevc1080p": check_original_profile("hevc1080p"),
    "light1c": check_original_profile("light1c"),
    "--mix other=1": check_unknown_profile,
    "dispatcher.py": check_legacy_profile,
    "--pending-mode pulse": check_pulse,
    '"cpuset"': check_task_cpuset,
    '"cpu_quota"': check_task_shared("quota", "TC_CPU_QUOTA_PCT", "50"),
    '"cpu_weight"': check_task_shared("weight", "TC_CPU_WEIGHT", "300"),
    '"unit_name"': check_task_shared("unit", "TC_UNIT_NAME", "tk-legacy-1.scope"),
    '{"input": ..., "output": ..., "scale": ...}': check_original_payload,
    # Scripts and flags: dispatcher
    "dispatcher.py --inputs DIR": check_central_basic,
    "dispatcher.py --outputs DIR": check_central_basic,
    "dispatcher.py --scale W:H": check_legacy_param("--scale", "640:360", "scale", "640x360"),
    "dispatcher.py --preset P": check_legacy_param("--preset", "fast", "preset", "fast"),
    "dispatcher.py --crf N": check_legacy_param("--crf", "30", "crf", 30),
    "dispatcher.py --nodes a,b,c": check_nodes,
    "dispatcher.py --policy rr3": check_direct_policy("rr3", RR),
    "dispatcher.py --policy duration-greedy": check_direct_policy("duration-greedy", LPT),
    "dispatcher.py --policy lpt-duration": check_direct_policy("lpt-duration", LPT),
    "dispatcher.py --policy duration-online": check_direct_policy("duration-online", LPT),
    "dispatcher.py --policy online-duration": check_direct_policy("online-duration", LPT),
    "dispatcher.py --mix \"p=w,...\"": check_central_basic,
    "dispatcher.py --total N": check_central_basic,
    "dispatcher.py --seed S": check_seed,
    "dispatcher.py --redis URL": check_redis_url,
    "dispatcher.py --pending": check_pending,
    "dispatcher.py --pending-mode fifo": check_fifo,
    "dispatcher.py --pending-max N": check_fifo,
    "dispatcher.py --pulse-size N": check_pulse_size,
    "dispatcher.py --pulse-interval S": check_pulse_size,
    "dispatcher.py --drip": check_drip,
    "dispatcher.py --batch-size N": check_fifo,
    "dispatcher.py --dribble-interval S": check_drip,
    "dispatcher.py --backlog-limit N": check_drip,
    # central
    "scheduler_central.py --redis URL": check_central("--redis", "REDIS"),
    "scheduler_central.py --weigher instances": check_central("--weigher", "instances"),
    "scheduler_central.py --weigher-order max": check_central("--weigher", "vcpu", "--weigher-order", "max"),
    "scheduler_central.py --pending q:pending": check_central("--pending", "q:pending", refuse=("--pending", "q:x"),
                                                              words=("--key-prefix",)),
    "scheduler_central.py --slots slots:available": check_central("--slots", "slots:available",
                                                                  refuse=("--slots", "s:x"), words=("--key-prefix",)),
    "scheduler_central.py --scan-slots 0": check_central("--scan-slots", "0", refuse=("--scan-slots", "4"),
                                                         words=("every feasible node",)),
    "scheduler_central.py --scan-pending 1": check_central("--scan-pending", "1", refuse=("--scan-pending", "3"),
                                                           words=("strict FIFO",)),
    # worker
    "worker.py --outputs DIR": check_worker(lambda r: r["info"]["wf"]["capacity"] == "3"),
    "worker.py --redis URL": check_worker(lambda r: r["info"]["wr"]["instance"]),
    "worker.py --parallel N": check_worker(lambda r: r["info"]["wf"]["parallel"] == "2"
                                           and r["slots"].count("wf") == 2),
    "worker.py --slots-key slots:available": check_worker(
        lambda r: r["info"]["wf"]["parallel"] == "2" and r["bad"].returncode == 2
        and "--key-prefix" in r["bad"].stderr and len(r["bad"].stderr.strip().splitlines()) == 1),
    "worker.py --capacity-units N": check_worker(lambda r: r["info"]["wf"]["capacity"] == "3"),
    "worker.py --allocation-ratio R": check_worker(
        lambda r: r["info"]["wr"]["capacity"] == str(int(1.5 * (os.cpu_count() or 1) + 1e-9))),
    "worker.py --cpu-binding shared": check_worker(lambda r: r["info"]["wf"]["binding"] == "shared"),
    "worker.py --cpuweight-per-vcpu N": check_worker(lambda r: r["info"]["wf"]["cpuweight_per_vcpu"] == "150"),
    "worker.py --reset-capacity": check_worker(lambda r: r["info"]["wr"]["instance"]
                                               and r["info"]["wr"]["allocation_ratio"] == "1.5"),
    "worker.py --clear-queue": check_worker(lambda r: "cleared" in r["left"].get("reason", "")),
    # adapter and other scripts
    "ffmpeg_wrapper.py <ffmpeg args>": check_wrapper,
    "ffmpeg_app.py <ffmpeg args>": check_script("apps/ffmpeg_app.py", "-version", out="ffmpeg version"),
    "generate_test_videos.py": check_script("generate_test_videos.py", "--help", out="--count"),
    "tools/setup/setup_controller.sh": check_script("setup/setup_controller.sh", "--help", out="usage"),
    "tools/setup/setup_worker.sh": check_script("setup/setup_worker.sh", "--help", out="usage"),
    "pip install -r tools/scheduler/requirements.txt": check_requirements,
    # environment variables
    "RUN_ID": check_run_id,
    "NODE_ID": check_collector(env={"NODE_ID": "n7"}, node_id="n7"),
    "STAGE": check_collector(env={"STAGE": "cloud"}, stage="cloud"),
    "PROC_PID_DIR": check_collector(env={"PROC_PID_DIR": "/tmp/x/pids"}, pid_dir=Path("/tmp/x/pids"),
                                    whitelist_only=True),
    "PROC_INTERVAL_MS": check_collector(env={"PROC_INTERVAL_MS": "1000"}, interval_ms=1000.0),
    "PROC_MATCH": check_collector(env={"PROC_MATCH": "^ffmpeg$"}, match="^ffmpeg$"),
    "PROC_REFRESH": check_collector(env={"PROC_REFRESH": "0"}, interval_ms=200.0),
    "PROC_SAMPLING": check_collector(env={"PROC_SAMPLING": "1"}, interval_ms=200.0),
    "USE_PY_COLLECT": check_make_collect,
    "STOP_ALL": check_stop_all,
    "TIME_SYNC": check_collector(env={"TIME_SYNC": "0"}, time_sync=False),
    "NTP_POOL": check_ntp_pool,
    "CPUSET": check_env_cpuset,
    "CPU_QUOTA": check_env_shared("cpu_quota_pct", 150),
    "CPU_WEIGHT": check_env_shared("cpu_weight", 300),
    "UNIT_NAME": check_env_unit,
    "TS_ENQUEUE": check_ts_enqueue,
    # make targets
    "make start-collect": check_make_collect,
    "make stop-collect": check_stop_all,
    "make export-opendc": check_make_export_opendc,
    "make clean": check_make_clean,
    "make stop": check_make_stop,
    "make setup": check_make_setup,
    "make build": check_make_removed("build", "make setup"),
    "make run": check_make_removed("run", "make demo"),
    "make load": check_make_removed("load", "dispatcher.py"),
    "make baseline": check_make_removed("baseline", "make demo"),
    "make real-all": check_make_removed("real-all", "make demo"),
}
NEEDS_FFMPEG = {"dispatcher.py", "ffmpeg_wrapper.py <ffmpeg args>", "ffmpeg_app.py <ffmpeg args>", "CPUSET",
                "CPU_QUOTA", "CPU_WEIGHT", "UNIT_NAME", "TS_ENQUEUE", "dispatcher.py --nodes a,b,c"} | {
    k for k in CHECKS if k.startswith(("dispatcher.py --policy", "dispatcher.py --scale", "dispatcher.py --preset",
                                       "dispatcher.py --crf"))}
NEEDS_REDIS = {k for k in CHECKS if not k.startswith(("fast1080p", "medium480p", "hevc1080p", "light1c", "{",
                                                      "tools/setup", "pip ", "ffmpeg_app", "generate_test",
                                                      "make setup", "make build", "make run", "make load",
                                                      "make baseline", "make real", "RUN_ID", "PROC_", "NODE_ID",
                                                      "STAGE", "TIME_SYNC", "NTP_POOL"))}


def doc_rows() -> list[str]:
    """The first code span of the first cell of every "| Original | Now |" table row in the four sections."""
    text = DOC.read_text()
    rows, section, in_table = [], None, False
    for line in text.splitlines():
        if line.startswith("## "):
            section = line.strip() if line.strip() in SECTIONS else None
            in_table = False
            continue
        if section is None:
            continue
        if line.startswith("| Original | Now |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            cell = line.split("|")[1]
            m = re.search(r"`([^`]+)`", cell)
            assert m, f"row without a code span: {line}"
            rows.append(m.group(1))
    return rows


def test_every_row_has_a_check():
    rows = doc_rows()
    assert len(rows) == len(set(rows)), "a row is listed twice"
    assert set(rows) == set(CHECKS), (sorted(set(rows) - set(CHECKS)), sorted(set(CHECKS) - set(rows)))
    assert "## Data, files and export" in DOC.read_text().split(SECTIONS[-1], 1)[1]  # the data section comes last


@pytest.mark.parametrize("row", [pytest.param(r, marks=[pytest.mark.system]) if r in NEEDS_REDIS or r in NEEDS_FFMPEG
                                 else r for r in CHECKS])
def test_row(row, request):
    if row in NEEDS_FFMPEG and FFMPEG is None:
        pytest.skip("ffmpeg/ffprobe not installed (apt-get install -y ffmpeg)")
    if row in NEEDS_REDIS:
        request.getfixturevalue("redis_server")  # marks the test `system` and skips without redis-server
    CHECKS[row](request)


# ---- pure logic of the direct mode, the Redis version check, the cpuset check ----


def test_round_robin_and_lpt():
    from tracekit.control import direct

    assert direct.round_robin(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    assert direct.duration_greedy([1.2, 0.4, 0.8, 0.6], ["n1", "n2"]) == ["n1", "n1", "n2", "n2"]
    assert direct.duration_greedy([1, 1, 1], ["x", "y"]) == ["x", "y", "x"]  # ties: first node, stable order
    assert direct.duration_greedy([], ["x"]) == []
    assert direct.longest_first([1, 3, 3, 2]) == [1, 2, 3, 0]


def test_online_pick():
    from tracekit.control.direct import online_pick

    assert online_pick(["a", "b"], {"a": 1, "b": 0}, {"a": 0, "b": 9}, 2) == "b"
    assert online_pick(["a", "b"], {"a": 1, "b": 1}, {"a": 5, "b": 2}, 2) == "b"
    assert online_pick(["a", "b"], {"a": 1, "b": 1}, {"a": 2, "b": 2}, 2) == "a"
    assert online_pick(["a", "b"], {"a": 2, "b": 2}, {}, 2) is None


def test_parse_nodes():
    from tracekit.control.direct import parse_nodes
    from tracekit.core.errors import UsageError

    assert parse_nodes(" a, b ,") == ["a", "b"]
    for bad in ("", "a,a", "a b"):
        with pytest.raises(UsageError):
            parse_nodes(bad)


def test_redis_version_check():
    from tracekit.core.errors import RedisUnavailable
    from tracekit.core.redis_conn import check_server_version, parse_version

    assert parse_version("7.0.15") == (7, 0, 15) and parse_version("6.2.0-rc1") == (6, 2, 0)
    check_server_version("6.2.0")
    check_server_version("7.2.4")
    check_server_version(None)  # INFO not allowed: BLMOVE will tell
    for old in ("6.0.16", "5.0.7", "garbage"):
        with pytest.raises(RedisUnavailable, match=r"needs Redis >= 6\.2 \(BLMOVE\)"):
            check_server_version(old, "the server at redis://h:6379/0")


def test_redis_version_of_the_real_server(redis_server):
    from tracekit.core.redis_conn import parse_version, server_version

    assert parse_version(server_version(redis_server.client())) >= (6, 2)


def test_cpuset_check():
    from tracekit.node.cpuset import check_requested

    assert check_requested([1], [0, 1], {}) is None
    assert "outside" in check_requested([2], [0, 1], {})
    assert "overlaps CPU(s) 1 of running task t7" in check_requested([0, 1], [0, 1, 2], {("t7", 1): [1, 2]})
    assert check_requested([0], [0, 1], {("t7", 1): [1]}) is None
    assert check_requested([], [0], {}) == "cpuset is empty"


@pytest.fixture
def env(run_env, tmp_path, monkeypatch):
    return with_profiles(run_env, tmp_path, monkeypatch, PROFILES)


@needs_ffmpeg
def test_direct_mode_runs_on_a_real_worker(env, daemons):
    """--policy rr3 without --mix: legacy720p tasks pushed to q:<node> run through the node's worker (real ffmpeg)."""
    from tracekit.core.redis_conn import connect

    inputs = Path(env["TRACEKIT_INPUTS"])
    for name in ("a.mp4", "b.mp4"):
        subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=64x48:rate=10:duration=0.3", "-c:v", "libx264", "-preset", "ultrafast",
                        str(inputs / name)], check=True, timeout=60)
    w = daemons.worker("dn1", "--exit-when-idle")
    r = connect(env["TRACEKIT_REDIS_URL"])
    wait_for(lambda: r.exists(K.heartbeat("dn1")), 30)
    p = dispatcher(env, "--policy", "rr3", "--nodes", "dn1", "--scale", "32:24", "--wait")
    assert p.returncode == 0, p.stderr + daemons.output(w)
    assert "done 2 / failed 0" in p.stdout
    outs = sorted((Path(env["TRACEKIT_OUTPUTS"]) / env["RUN_ID"]).glob("*_legacy720p.mp4"))
    assert len(outs) == 2 and all(o.stat().st_size > 0 for o in outs)
    evs = [e for _, e in read_jsonl(Path(env["TRACEKIT_LOGS"]) / env["RUN_ID"] / "dn1" / "events.jsonl")
           if e.get("kind") == "exec"]
    assert len(evs) == 2 and all("scale=32:24" in e["argv"] and "-c:a" in e["argv"] for e in evs)
    assert r.get(K.cap("dn1")) == r.get(K.cap_total("dn1"))  # direct tasks reserved no capacity, none came back


class RecordingStop(threading.Event):
    """A stop event whose waits return at once, recording each timeout: the feeding schedule without sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        return False


def test_pulse_schedule_spaces_the_tasks_of_a_pulse():
    from tracekit.control.dispatch import FeedConfig, batches

    stop = RecordingStop()
    got = list(batches(FeedConfig(mode="pulse", pulse_size=3, pulse_interval=100.0), None, K, 7, stop))
    assert got == [1] * 7 and stop.waits == [1.0, 1.0, 100.0, 1.0, 1.0, 100.0]  # the original's 1 s default
    stop = RecordingStop()
    got = list(batches(FeedConfig(mode="pulse", pulse_size=3, pulse_interval=5.0, pulse_spacing=0), None, K, 7, stop))
    assert got == [3, 3, 1] and stop.waits == [5.0, 5.0]


def test_legacy_params():
    from tracekit.control.dispatch import legacy_params
    from tracekit.core.errors import UsageError

    assert legacy_params(None, None, None) == {}
    assert legacy_params("1280:720", "veryfast", 28) == {"scale": "1280x720", "preset": "veryfast", "crf": 28}
    for bad in (("12:", None, None), (None, "warp", None), (None, None, 99)):
        with pytest.raises(UsageError):
            legacy_params(*bad)


def test_direct_drip_waits_for_its_node_and_drops_nothing(run_env, redis_client):
    """Offline placement fed with --drip: a task waits until its own node's queue is below the limit (the original
    skipped it and lost it); every task arrives on the node its policy chose."""
    from tracekit.control import direct

    for n in ("n1", "n2"):
        redis_client.set(K.heartbeat(n), "x", px=60_000)
    tasks = [{"seq": i, "trace_id": f"d{i}", "profile": "nap", "cpu_units": 1, "attempt": 1, "output": f"d{i}.txt"}
             for i in range(5)]
    stop, seen, got = threading.Event(), [], {"n1": [], "n2": []}

    def consume():
        while not stop.is_set():
            for n in ("n1", "n2"):
                seen.append(redis_client.llen(K.queue(n)))
                raw = redis_client.lpop(K.queue(n))
                if raw:
                    got[n].append(json.loads(raw)["trace_id"])
            time.sleep(0.03)
    th = threading.Thread(target=consume, daemon=True)
    th.start()
    try:
        counts = direct.dispatch_direct(redis_client, K, run_env["RUN_ID"], tasks, ["n1", "n2"], "rr3",
                                        lambda t: 0.0, batch_size=2, backlog_limit=1, interval=0.02, drip=True,
                                        say=lambda s: None)
        wait_for(lambda: sum(map(len, got.values())) == 5, 10)
    finally:
        stop.set()
        th.join()
    assert counts == {"n1": 3, "n2": 2} and max(seen) <= 1
    assert sorted(got["n1"]) == ["d0", "d2", "d4"] and sorted(got["n2"]) == ["d1", "d3"]
