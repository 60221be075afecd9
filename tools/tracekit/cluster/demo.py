"""``make demo``: the whole pipeline on an emulated N-node cluster, from nothing to traces.

Steps: check dependencies (``make setup`` only when something is missing) -> generate small inputs ->
network + private redis-server -> per node: collector, worker -> central scheduler -> dispatch a mix
and show live progress -> stop everything in reverse order (also on Ctrl-C or error; no process is
left behind) -> parse + audit -> OpenDC export -> replay check under OpenDC's rules (a section of the audit report)
-> Perfetto timeline -> print where the results are.
Settings come from the environment (the Makefile passes ``NODES=3`` etc. through) or from flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tracekit.cluster.emulation import (
    CONTROLLER,
    SCRIPTS,
    Cluster,
    ClusterConfig,
    env_setting,
    log_tail,
    require_scripts,
    script,
)
from tracekit.cluster.setup import new_run_id, write_env_file
from tracekit.control.placement import ORDERS, WEIGHERS
from tracekit.core import paths
from tracekit.core.errors import EXIT_FAILURE, DependencyMissing, StepFailed, UsageError

PY_MODULES = ("redis", "psutil", "pandas", "pyarrow", "numpy", "matplotlib", "tqdm")
BINARIES = {"ffmpeg": "ffmpeg", "redis-server": "redis-server"}
DEFAULT_MIX = "fast1080p=1,medium480p=2,light1c=3"
# Clips big enough that encoding (not process start-up) dominates, small enough for < 3 min on 2 cores.
DEMO_CLIPS = ["--quick", "--resolution", "640x360", "--duration", "2"]
DEFAULT_SEED = 20250901
NEEDED = ["videos", "collector", "worker", "scheduler", "dispatcher", "parse", "export", "replay", "perfetto"]
SCENARIOS = ("batch", "service")
SERVICE_PROFILE = "thumbsvc"
# the service scenario's request mix (docs/services.md): mostly the trivial endpoint, some real ffmpeg work
# (at the default rate about 6 thumbnails/s: within the service's one CPU unit, so latency shows service time)
SERVICE_MIX = ('{"path": "/ping", "weight": 8}\n{"path": "/thumb?t=0.5&w=320", "weight": 1}\n'
               '{"path": "/thumb?t=2.0&w=640", "weight": 1}\n')


@dataclass
class DemoConfig:
    """The ``make demo`` variables."""

    run_id: str | None = None  # None = a new one, written to run_id.env
    nodes: int = 2
    total: int = 24
    mix: str = DEFAULT_MIX
    seed: int = DEFAULT_SEED
    weigher: str = ""
    weigher_order: str = "min"
    binding: str = "exclusive"
    ratio: float = 1.0
    redis_url: str | None = None
    netns: str | None = None
    interval_ms: int = 200
    timeout_s: float = 600.0
    inputs: str | None = None  # default <inputs root>/demo
    run_id_file: Path = paths.RUN_ID_FILE
    setup: bool = True
    scenario: str = "batch"  # "batch": the task mix; "service": the demo service driven by the load generator
    rate: float = 30.0  # service scenario: requests per second (open loop, constant)
    duration_s: float = 10.0  # service scenario: seconds of load


# --- run id ---
def write_run_id_file(rid: str, path: Path = paths.RUN_ID_FILE) -> None:
    """Write ``export RUN_ID=<rid>`` to ``run_id.env``, keeping its other lines."""
    write_env_file(path, {"RUN_ID": rid})


def explicit_run_id(env: dict[str, str], run_id_file: Path) -> str | None:
    """The RUN_ID the user asked for, or None for "make a new one".

    The Makefile exports RUN_ID from run_id.env when it is not given, so a RUN_ID equal to the file's is
    only explicit when it was given on the make command line (it then shows in MAKEFLAGS).
    """
    rid = env.get("RUN_ID") or None
    if rid is None:
        return None
    on_make_cmdline = re.search(r"(^|\s)RUN_ID=", env.get("MAKEFLAGS", "")) is not None
    if rid == paths.read_run_id_file(run_id_file) and not on_make_cmdline:
        return None
    return rid


# --- dependencies ---
def missing_deps() -> list[str]:
    """Binaries and Python modules the demo needs that are not installed."""
    out = [pkg for binary, pkg in BINARIES.items() if shutil.which(binary) is None]
    out += [f"python:{m}" for m in PY_MODULES if importlib.util.find_spec(m) is None]
    return out


def ensure_deps(allow_setup: bool) -> None:
    """Run ``make setup`` only when something is missing; re-run the demo in .venv if that is needed."""
    missing = missing_deps()
    if not missing:
        return
    if not allow_setup:
        raise DependencyMissing(f"missing: {', '.join(missing)} (run: make setup)", name=missing[0])
    print(f"demo: missing {', '.join(missing)}: running make setup", flush=True)
    if subprocess.run(["make", "-C", str(paths.REPO_ROOT), "setup"], stdin=subprocess.DEVNULL).returncode != 0:
        raise DependencyMissing("make setup failed (see above)", name=missing[0])
    still = [m for m in missing_deps() if not m.startswith("python:")]
    if still:
        raise DependencyMissing(f"still missing after make setup: {', '.join(still)}", name=still[0])
    venv_py = paths.REPO_ROOT / ".venv" / "bin" / "python"
    if any(m.startswith("python:") for m in missing_deps()):
        if venv_py.exists() and Path(sys.executable).resolve() != venv_py.resolve():
            os.execv(str(venv_py), [str(venv_py), str(paths.REPO_ROOT / "tools" / "demo.py"), *sys.argv[1:]])
        left = missing_deps()
        raise DependencyMissing(f"Python modules still missing: {', '.join(left)}", name=left[0] if left else None)


# --- steps ---
def _step(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def run_tool(name: str, args: list[str], env: dict[str, str], log: Path) -> int:
    """Run one of the pipeline's scripts in the foreground; its output goes to the terminal and ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, str(script(name)), *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                sys.stdout.write("    " + line.decode(errors="replace"))
            sys.stdout.flush()
            return proc.wait()
        except BaseException:  # Ctrl-C / SIGTERM of the demo: the step must not outlive it
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise


def plain_env(rid: str) -> dict[str, str]:
    """Environment of the offline steps: no Redis settings, no password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(RUN_ID=rid, PYTHONPATH=os.pathsep.join(filter(None, [str(paths.REPO_ROOT / "tools"),
                                                                      os.environ.get("PYTHONPATH")])))
    return env


def follow(cluster: Cluster, total: int, timeout_s: float) -> int:
    """Live progress until the dispatcher (``--wait``) exits; its exit status."""
    from tqdm import tqdm

    client = cluster.client()
    keys = cluster.keys
    deadline = time.monotonic() + timeout_s
    daemons = [(n, name) for n in cluster.node_ids for name in ("collector", "worker")] + [(CONTROLLER, "scheduler")]
    disp = cluster.sup.get(CONTROLLER, "dispatcher")
    tty = sys.stdout.isatty()
    last = (-1, 0.0)  # (finished, when): off a terminal, print only on progress or every 10 s
    with tqdm(total=total, desc="tasks", unit="task", dynamic_ncols=True, file=sys.stdout) as bar:
        while True:
            done, failed = client.hlen(keys.done), client.hlen(keys.failed)
            pipe = client.pipeline()
            pipe.llen(keys.pending)
            for n in cluster.node_ids:
                pipe.llen(keys.running(n))
            pending, *running = pipe.execute()
            bar.n = min(total, done + failed)
            bar.set_postfix_str(f"failed={failed} pending={pending} running=" +
                                "/".join(str(r) for r in running), refresh=False)
            if tty or bar.n != last[0] or time.monotonic() - last[1] > 10:
                bar.refresh()
                last = (bar.n, time.monotonic())
            if not disp.alive():
                return disp.returncode
            cluster.check_alive(daemons)
            if time.monotonic() > deadline:
                raise StepFailed(f"the run did not finish within {timeout_s:g}s (TIMEOUT); "
                                    f"{done + failed}/{total} tasks finished")
            time.sleep(0.5)


def start_loadgen(cluster: Cluster, cfg: DemoConfig, rid: str, ctl_dir: Path) -> None:
    """Service scenario: the load generator on the controller side, aimed at the service's published address on
    its node (across the emulated network), stopping the service when done."""
    mix = ctl_dir / "service_mix.jsonl"
    mix.parent.mkdir(parents=True, exist_ok=True)
    mix.write_text(SERVICE_MIX)
    argv = [sys.executable, str(paths.REPO_ROOT / "tools" / "loadgen.py"), "--service", "t000001", "--mix", str(mix),
            "--rate", f"{cfg.rate:g}", "--duration", f"{cfg.duration_s:g}", "--seed", str(cfg.seed), "--timeout",
            "10", "--wait-ready", "120", "--stop-after", "--run-id", rid]
    cluster.start_controller_process("loadgen", argv)
    _step(f"load generator: {cfg.rate:g} requests/s for {cfg.duration_s:g} s at service t000001 ({SERVICE_PROFILE})")


def loadgen_status(cluster: Cluster) -> int:
    """The load generator's exit status once it ended (it stopped the service, so it is about to end)."""
    proc = cluster.sup.get(CONTROLLER, "loadgen")
    deadline = time.monotonic() + 30
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    _step(f"loadgen: {log_tail(proc.log).removeprefix('loadgen: ')}")
    return 0 if proc.returncode == 0 else 1


def _sigterm(signum, frame):  # a terminated demo cleans up like a Ctrl-C'd one
    raise KeyboardInterrupt


def run_demo(cfg: DemoConfig) -> int:
    """The whole pipeline; returns 0, or 1 when a task or a step failed."""
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    ensure_deps(cfg.setup)
    require_scripts(NEEDED)
    rid = paths.check_id("RUN_ID", cfg.run_id) if cfg.run_id else new_run_id("demo")
    run_dir = paths.run_dir(rid)
    if run_dir.exists() and any(run_dir.iterdir()):
        old = run_dir.with_name(f"{rid}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(old)
        _step(f"logs/{rid} held an earlier run: moved to {old}")
    write_run_id_file(rid, cfg.run_id_file)
    _step(f"RUN_ID={rid} (written to {cfg.run_id_file}); {cfg.nodes} nodes, " + (
          f"scenario service ({SERVICE_PROFILE}, {cfg.rate:g} req/s for {cfg.duration_s:g} s), "
          if cfg.scenario == "service" else f"{cfg.total} tasks, mix {cfg.mix}, ") +
          f"seed {cfg.seed}, binding {cfg.binding}, ratio {cfg.ratio:g}, weigher {cfg.weigher or 'first-fit'}")
    env0 = plain_env(rid)
    ctl_dir = paths.controller_dir(rid)

    inputs = Path(cfg.inputs) if cfg.inputs else paths.inputs_root() / "demo"
    _step(f"generating small inputs in {inputs}")
    gen_log = ctl_dir / "generate_test_videos.log"
    if run_tool("videos", [*DEMO_CLIPS, "--out", str(inputs), "--no-progress"], env0, gen_log):
        raise StepFailed(f"tools/{SCRIPTS['videos']} failed (see {gen_log})")

    ccfg = ClusterConfig(run_id=rid, nodes=cfg.nodes, binding=cfg.binding, ratio=cfg.ratio, weigher=cfg.weigher,
                         weigher_order=cfg.weigher_order, interval_ms=cfg.interval_ms, redis_url=cfg.redis_url,
                         netns_mode=cfg.netns)
    status = 0
    cl = Cluster(ccfg)
    try:
        cl.start()
        _step(("cluster: " if cl.emulated else "FALLBACK: ") + cl.describe())
        for n in cl.node_ids:
            cl.start_node_processes(n)
        cl.wait_nodes_registered()
        _step(f"collectors and workers up on {', '.join(cl.node_ids)}; starting the central scheduler")
        cl.start_scheduler()
        service = cfg.scenario == "service"
        mix, total = (f"{SERVICE_PROFILE}=1", 1) if service else (cfg.mix, cfg.total)
        disp = [sys.executable, str(script("dispatcher")), "--inputs", str(inputs), "--mix", mix,
                "--total", str(total), "--seed", str(cfg.seed), "--wait", "--no-progress", "--run-id", rid]
        cl.start_controller_process("dispatcher", disp)
        if service:
            start_loadgen(cl, cfg, rid, ctl_dir)
        code = follow(cl, total, cfg.timeout_s)
        if service:
            code = code or loadgen_status(cl)
        _step(f"dispatcher: {log_tail(cl.sup.get(CONTROLLER, 'dispatcher').log)}")
        if code not in (0, EXIT_FAILURE):
            raise StepFailed(f"dispatcher exited with {code}: see {cl.sup.get(CONTROLLER, 'dispatcher').log}")
        status = 1 if code else 0
    finally:
        report = cl.stop()
        if cl.sup is not None:
            _step("stopped every process (reverse start order)" +
                  (f"; killed {len(report['leftovers'])} left behind: {report['leftovers']}"
                   if report["leftovers"] else "; none left behind"))
        for problem in report["network"]:
            print(f"demo: warning: network cleanup: {problem}", file=sys.stderr)

    _step("parsing raw logs into CTS + audit")
    if run_tool("parse", ["--run-id", rid], env0, ctl_dir / "parse.log"):
        status = 1
        print(f"demo: parse_cts.py reported a failure (see {ctl_dir / 'parse.log'})", file=sys.stderr)
    out_dir = paths.run_dir(rid)
    _step("exporting to OpenDC")
    if run_tool("export", ["--input", str(out_dir), "--output", str(out_dir / "opendc")], env0, ctl_dir / "export.log"):
        raise StepFailed(f"export_opendc.py failed (see {ctl_dir / 'export.log'})")
    _step("replaying the export under OpenDC's rules (verdict in the audit report)")
    if run_tool("replay", ["--input", str(out_dir / "opendc")], env0, ctl_dir / "replay.log"):
        # a check, not a step the results depend on: the run, CTS and export stand; say so and go on
        print(f"demo: warning: the replay check did not run to the end (see {ctl_dir / 'replay.log'})",
              file=sys.stderr)
    _step("exporting a Perfetto timeline")
    if run_tool("perfetto", ["--input", str(out_dir), "--output", str(out_dir / "timeline.json")], env0,
                ctl_dir / "perfetto.log"):
        raise StepFailed(f"export_perfetto.py failed (see {ctl_dir / 'perfetto.log'})")
    print_results(rid, time.monotonic() - t0)
    return status


def print_results(rid: str, elapsed_s: float) -> None:
    """Where the traces, the report and the plots are."""
    d = paths.run_dir(rid)
    cts = paths.cts_dir(rid)
    plots = sorted(p for p in d.rglob("*.png") if "opendc" not in p.parts)
    print(f"\ndemo: done in {elapsed_s:.0f} s. Results of RUN_ID={rid}:")
    rows = [("CTS traces", cts), ("audit report", cts / "audit_report.md"), ("OpenDC trace", d / "opendc"),
            ("OpenDC replay", d / "opendc-replay"), ("Perfetto timeline", d / "timeline.json"), ("raw logs", d)]
    for label, p in rows:
        print(f"  {label:18} {p}{'' if p.exists() else '  (missing)'}")
    for p in plots:
        print(f"  {'plot':18} {p}")


# --- command line ---
def parse_args(argv: list[str] | None = None) -> DemoConfig:
    """Flags; each defaults to the environment variable of the same (upper-case) name, as make passes it."""
    p = argparse.ArgumentParser(
        prog="demo.py",
        description="The whole Tracekit pipeline on an emulated N-node cluster (make demo). Every flag "
        "defaults to the environment variable in brackets, so `make demo NODES=3 TOTAL=20` works.",
    )
    p.add_argument("--run-id", default=None, help="[RUN_ID] run id (default: a new one, written to run_id.env)")
    p.add_argument("--nodes", type=int, default=env_setting("NODES", DemoConfig.nodes, int),
                   help=f"[NODES] emulated nodes ({DemoConfig.nodes})")
    p.add_argument("--total", type=int, default=env_setting("TOTAL", DemoConfig.total, int),
                   help=f"[TOTAL] tasks ({DemoConfig.total})")
    p.add_argument("--mix", default=env_setting("MIX", DEFAULT_MIX), help=f"[MIX] profile weights ({DEFAULT_MIX})")
    p.add_argument("--seed", type=int, default=env_setting("SEED", DEFAULT_SEED, int), help=f"[SEED] ({DEFAULT_SEED})")
    p.add_argument("--weigher", default=env_setting("WEIGHER", ""), choices=WEIGHERS,
                   help="[WEIGHER] '' = first-fit (default), " + ", ".join(name for name in WEIGHERS if name))
    p.add_argument("--weigher-order", default=env_setting("WEIGHER_ORDER", DemoConfig.weigher_order),
                   choices=ORDERS, help=f"[WEIGHER_ORDER] ({DemoConfig.weigher_order})")
    p.add_argument("--binding", default=env_setting("BINDING", DemoConfig.binding), choices=["exclusive", "shared"],
                   help=f"[BINDING] worker --cpu-binding ({DemoConfig.binding})")
    p.add_argument("--ratio", type=float, default=env_setting("RATIO", DemoConfig.ratio, float),
                   help=f"[RATIO] worker --allocation-ratio ({DemoConfig.ratio})")
    p.add_argument("--redis", default=env_setting("REDIS_URL", None),
                   help="[REDIS_URL] use this Redis instead of a private redis-server; password via "
                   "TRACEKIT_REDIS_PASSWORD or TRACEKIT_REDIS_PASSWORD_FILE")
    p.add_argument("--netns", default=env_setting("NETNS", None), choices=["auto", "0", "1"],
                   help="[NETNS] auto (default): namespaces when possible, else plain processes; 0: plain; "
                   "1: namespaces or fail")
    p.add_argument("--interval-ms", type=int, default=env_setting("PROC_INTERVAL_MS", DemoConfig.interval_ms, int),
                   help=f"[PROC_INTERVAL_MS] collector sampling interval ({DemoConfig.interval_ms})")
    p.add_argument("--timeout", type=float, default=env_setting("TIMEOUT", DemoConfig.timeout_s, float),
                   help=f"[TIMEOUT] seconds the tasks may take before the demo gives up ({DemoConfig.timeout_s:g})")
    p.add_argument("--inputs", default=env_setting("INPUTS", None),
                   help="[INPUTS] folder for the generated inputs (default: <inputs root>/demo)")
    p.add_argument("--run-id-file", default=env_setting("TRACEKIT_RUN_ID_FILE", str(paths.RUN_ID_FILE)),
                   help="[TRACEKIT_RUN_ID_FILE] where the run id is written (default: run_id.env at the repo root)")
    p.add_argument("--no-setup", action="store_true", help="never run make setup; fail when something is missing")
    p.add_argument("--scenario", default=env_setting("SCENARIO", DemoConfig.scenario), choices=SCENARIOS,
                   help="[SCENARIO] batch (default): the task mix; service: the demo HTTP service on a node, driven "
                   "over the emulated network by the load generator (docs/services.md)")
    p.add_argument("--rate", type=float, default=env_setting("RATE", DemoConfig.rate, float),
                   help=f"[RATE] service scenario: requests per second ({DemoConfig.rate:g})")
    p.add_argument("--duration", type=float, default=env_setting("DURATION", DemoConfig.duration_s, float),
                   help=f"[DURATION] service scenario: seconds of load ({DemoConfig.duration_s:g})")
    a = p.parse_args(argv)
    if a.nodes < 1 or a.nodes > 64:
        raise UsageError(f"NODES must be 1..64 (got {a.nodes})")
    if a.total < 1:
        raise UsageError(f"TOTAL must be >= 1 (got {a.total})")
    if a.ratio <= 0:
        raise UsageError(f"RATIO must be > 0 (got {a.ratio:g})")
    run_id_file = Path(a.run_id_file)
    rid = a.run_id or explicit_run_id(dict(os.environ), run_id_file)
    return DemoConfig(run_id=rid, nodes=a.nodes, total=a.total, mix=a.mix, seed=a.seed, weigher=a.weigher,
                      weigher_order=a.weigher_order, binding=a.binding, ratio=a.ratio, redis_url=a.redis,
                      netns=a.netns, interval_ms=a.interval_ms, timeout_s=a.timeout, inputs=a.inputs,
                      run_id_file=run_id_file, setup=not a.no_setup, scenario=a.scenario, rate=a.rate,
                      duration_s=a.duration)


def main(argv: list[str] | None = None) -> int:
    """Entry point of tools/demo.py."""
    return run_demo(parse_args(argv))
