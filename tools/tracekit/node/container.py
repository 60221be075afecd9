"""Run a task's command in a container runtime (podman, or docker by name) and measure it from the container's
cgroup (docs/containers.md).

The adapter's child executes the runtime's client (``podman run ...``) instead of the application. The binding
becomes the runtime's own flags (``--cpuset-cpus``; ``--cpu-shares`` and ``--cpu-quota``; ``--memory``) and the
container is placed under a parent cgroup the adapter creates per task (``--cgroup-parent=/tracekit/<name>``,
``cgroupfs.PARENT``). That parent holds the container's cgroup and the runtime's monitor (conmon, a few ms of CPU),
and keeps their CPU and peak memory after the runtime removed the container's own cgroup (the kernel charges every
ancestor), so:

- the PID sentinel names the runtime client (the adapter's child) with the parent cgroup: the collector samples
  the container's cumulative CPU and memory from it while the task runs;
- at exit the adapter reads the exact totals (``cg_cpu_us``, ``cg_peak_kb``) from the same parent;
- the container id comes from the runtime's ``--cidfile``, the image from the profile.

``ContainerRun`` has the interface of ``binding.SharedBinding`` (``mechanism``, ``cgroup``, ``argv_prefix``,
``attach``, ``release``, ``weight``, ``quota_pct``, ``note``), so the adapter runs it through its usual path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core.errors import Unsupported, UsageError
from tracekit.node import binding as bind
from tracekit.node import cgroupfs

RUNTIMES = ("podman", "docker")
# the images tools/build_container_image.sh builds (localhost/tracekit-<kind>:<Debian suite>)
FFMPEG_IMAGE = "localhost/tracekit-ffmpeg:bookworm"
SYSTEMD_IMAGE = "localhost/tracekit-systemd:bookworm"
# the adapter's environment (docs/internals.md, "Worker -> adapter"): set by the worker from the profile
ENV_RUNTIME, ENV_IMAGE, ENV_MEMORY = "TC_CONTAINER_RUNTIME", "TC_CONTAINER_IMAGE", "TC_CONTAINER_MEMORY"
# an image reference: registry/name:tag or @digest, no option-like or shell-like text
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
MEMORY_RE = re.compile(r"^[1-9][0-9]{0,12}[kmg]?$")
# podman with runc and the cgroupfs manager: what starts containers on a host whose PID 1 is not systemd and whose
# cgroups are hybrid (crun refuses there); the ulimits keep runc below the host's hard limits
PODMAN_GLOBAL = ("--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file")
PODMAN_RUN = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@dataclass(frozen=True)
class ContainerSpec:
    """A profile's ``container``: runtime, image and optional memory limit (``512m``)."""

    runtime: str
    image: str
    memory: str | None = None

    def env(self) -> dict[str, str]:
        """The adapter's environment variables for this spec (the worker passes them)."""
        out = {ENV_RUNTIME: self.runtime, ENV_IMAGE: self.image}
        if self.memory:
            out[ENV_MEMORY] = self.memory
        return out


def check_spec(value: object, where: str = "container") -> ContainerSpec:
    """A profile's ``container`` object validated (``UsageError`` naming what is wrong)."""
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected an object with runtime and image")
    runtime, image, memory = value.get("runtime", "podman"), value.get("image"), value.get("memory")
    unknown = set(value) - {"runtime", "image", "memory"}
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if runtime not in RUNTIMES:
        raise UsageError(f"{where}: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not isinstance(image, str) or not IMAGE_RE.match(image):
        raise UsageError(f"{where}: image must be an image reference such as localhost/tracekit-ffmpeg:bookworm")
    if memory is not None and (not isinstance(memory, str) or not MEMORY_RE.match(memory)):
        raise UsageError(f"{where}: memory must look like 512m, 2g or a byte count")
    return ContainerSpec(runtime, image, memory)


def spec_from_env(env: dict) -> ContainerSpec | None:
    """The container the adapter must use, from its environment; None without ``TC_CONTAINER_IMAGE``."""
    if not env.get(ENV_IMAGE):
        return None
    spec = {"runtime": env.get(ENV_RUNTIME) or "podman", "image": env[ENV_IMAGE]}
    if env.get(ENV_MEMORY):
        spec["memory"] = env[ENV_MEMORY]
    return check_spec(spec, where="TC_CONTAINER_*")


def env_for_profile(profile: dict) -> dict[str, str]:
    """The ``TC_CONTAINER_*`` variables of a checked profile (empty when it runs on the host)."""
    c = profile.get("container")
    return check_spec(c).env() if c else {}


# ---- pure: the runtime's command line ----


def runtime_argv(spec: ContainerSpec, *, name: str, cidfile: str, cgroup_parent: str, cpuset: str | None,
                 cpu_shares: int | None, quota_us: int | None, mounts: list[tuple[str, bool]],
                 argv: list[str]) -> list[str]:
    """The runtime client's argv running ``argv`` in a new container (removed at exit).

    ``mounts``: host folders made visible at the same path (``(path, read_only)``), so the task's argv needs no
    change; no network (a task never needs one); the binding as the runtime's own flags."""
    cmd = [spec.runtime]
    if spec.runtime == "podman":
        cmd += PODMAN_GLOBAL
    # --pull never: a missing image fails at once with the runtime's message instead of waiting on a registry
    # --init: a small init as PID 1 passes signals on (a command as PID 1 ignores SIGTERM without a handler)
    cmd += ["run", "--rm", "--pull", "never", "--init", "--name", name, "--cidfile", cidfile,
            "--cgroup-parent", cgroup_parent, "--network", "none"]
    if spec.runtime == "podman":
        cmd += PODMAN_RUN
    if cpuset:
        cmd += ["--cpuset-cpus", cpuset]
    if cpu_shares:
        cmd += ["--cpu-shares", str(int(cpu_shares))]
    if quota_us:
        cmd += ["--cpu-period", str(cgroupfs.CFS_PERIOD_US), "--cpu-quota", str(int(quota_us))]
    if spec.memory:
        cmd += ["--memory", spec.memory]
    for path, ro in mounts:
        cmd += ["--volume", f"{path}:{path}:{'ro' if ro else 'rw'}"]
    return [*cmd, spec.image, *argv]


def task_mounts(input_path: str | None, output_tmp: str | None) -> list[tuple[str, bool]]:
    """The folders of the task's input (read-only) and temporary output (writable), each once."""
    out: dict[str, bool] = {}
    if output_tmp:
        out[str(Path(output_tmp).resolve().parent)] = False
    if input_path:
        d = str(Path(input_path).resolve().parent)
        out.setdefault(d, True)
    return sorted(out.items())


# ---- the runtime on this machine ----


def unavailable_reason(runtime: str = "podman", image: str | None = None) -> str | None:
    """Why a container cannot start here (the runtime's own message), or None when a trivial one ran."""
    if shutil.which(runtime) is None:
        return f"{runtime} is not installed"
    if image is not None:
        r = subprocess.run([runtime, "image", "exists", image] if runtime == "podman"
                           else [runtime, "image", "inspect", image], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return f"image {image} missing (tools/build_container_image.sh builds it)"
    probe = [runtime, *(PODMAN_GLOBAL if runtime == "podman" else ()), "run", "--rm", "--network", "none",
             *(PODMAN_RUN if runtime == "podman" else ()), image or FFMPEG_IMAGE, "true"]
    try:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{runtime} could not start a container: {exc}"
    if r.returncode != 0:
        lines = [x for x in (r.stderr or r.stdout).strip().splitlines() if x.strip()]
        return f"{runtime} could not start a container: {lines[-1] if lines else f'exit code {r.returncode}'}"
    return None


@dataclass
class ContainerRun:
    """One task's container: the runtime argv prefix, its parent cgroup, and what it learnt (id, image)."""

    spec: ContainerSpec
    name: str
    cgroup: dict | None
    cidfile: str
    mechanism: str
    weight: int | None = None
    quota_pct: float | None = None
    argv_prefix: list = field(default_factory=list)
    note: str | None = None
    _id: str | None = None

    def attach(self, pid: int) -> None:
        """The runtime client stays outside the container's cgroup (its own CPU is in the event's rusage)."""

    def container_id(self) -> str | None:
        """The container's id (the runtime's ``--cidfile``), once the runtime created it."""
        if self._id is None:
            with contextlib.suppress(OSError):
                self._id = Path(self.cidfile).read_text().strip() or None
        return self._id

    def release(self) -> list:
        """After the client exited: remove the container (if the runtime left it), the cidfile and the parent
        cgroup; returns the cgroup dirs still busy."""
        cid = self.container_id()
        with contextlib.suppress(OSError):
            os.unlink(self.cidfile)
        with contextlib.suppress(OSError):
            os.rmdir(Path(self.cidfile).parent)
        if cid and _container_exists(self.spec.runtime, cid):
            _runtime_quiet(self.spec.runtime, "rm", "-f", cid)
        return remove_parent(self.name) if self.cgroup else []


def _runtime_quiet(runtime: str, *args: str) -> int:
    cmd = [runtime, *(PODMAN_GLOBAL if runtime == "podman" else ()), *args]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


def _container_exists(runtime: str, cid: str) -> bool:
    return _runtime_quiet(runtime, "container", "exists" if runtime == "podman" else "inspect", cid) == 0


def _hierarchies(root: Path = cgroupfs.CGROUP_ROOT) -> list[Path]:
    """Every mounted hierarchy under the cgroup root (v1: one per controller; v2: the root itself)."""
    if (root / "cgroup.controllers").exists():
        return [root]
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()] if root.is_dir() else []


def remove_parent(name: str, wait_s: float = 5.0, root: Path = cgroupfs.CGROUP_ROOT) -> list[str]:
    """Remove ``tracekit/<name>`` (and what the runtime left in it: its monitor's cgroup) in every hierarchy; the
    runtime removes the container's own cgroup a moment after its client exits, so empty dirs are retried."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for h in _hierarchies(root):
            top = h / cgroupfs.PARENT / name
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(str(d))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def prepare(spec: ContainerSpec, run_id: str, node_id: str, trace_id: str, attempt: int, binding: str,
            cpuset: str | None, weight: int | None, quota_pct: float | None, input_path: str | None,
            output_tmp: str | None) -> ContainerRun:
    """Create the task's parent cgroup and the runtime argv prefix (the application's argv follows it)."""
    if shutil.which(spec.runtime) is None:
        raise Unsupported(f"container runtime {spec.runtime} is not installed on this node")
    name = bind.task_cgroup_name(run_id, node_id, trace_id, attempt)
    if binding == "shared" and quota_pct is None:
        quota_pct = bind.pending_quota(run_id, node_id, name)
    w = int(weight) if (binding == "shared" and weight) else None
    run = ContainerRun(spec, name, None, "", spec.runtime, weight=w, quota_pct=quota_pct if w else None)
    # shared mode: the weight and quota go on the parent, where the worker's max-min rebalance
    # (binding.rebalance_shared -> apply_quota on tracekit/<name>) updates them while the task runs
    q = bind.quota_us(quota_pct) if w else None
    try:
        if cgroupfs.v2_available():
            run.cgroup = cgroupfs.create_v2(name, bind.v2_weight(w or 100), q)
        elif cgroupfs.v1_available():
            run.cgroup = cgroupfs.create_v1(name, bind.shares_from_weight(w or 100), q)
    except OSError as exc:
        run.note = f"no parent cgroup ({exc.strerror or exc}): no exact container totals"
    tmpdir = tempfile.mkdtemp(prefix="tracekit-cid.")
    run.cidfile = os.path.join(tmpdir, "cid")  # the runtime refuses an existing cidfile: a fresh folder
    run.argv_prefix = runtime_argv(
        spec, name=f"tk-{name}"[:250], cidfile=run.cidfile, cgroup_parent=f"/{cgroupfs.PARENT}/{name}",
        cpuset=cpuset if binding == "exclusive" else None,
        cpu_shares=bind.shares_from_weight(w) if w else None,
        quota_us=q if w and run.cgroup is None else None, mounts=task_mounts(input_path, output_tmp), argv=[])
    return run
