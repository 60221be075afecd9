"""Record formats shared by the parts: raw node logs and the CTS field lists. Defined once here.

Raw files are JSON Lines written by the node side and read by the parser (``paths.py`` says where).
Raw timestamps are in the *node's* wall clock, epoch milliseconds as floats; the parser adds the
node's clock offset (``node.json`` ``clock.offset_ms``) and rounds to integer ms for CTS.

PID sentinel ``$PROC_PID_DIR/<pid>`` (written by the adapter before the application executes):
    one JSON object, ``SENTINEL_FIELDS``. ``starttime`` is field 22 of ``/proc/<pid>/stat``
    (clock ticks since boot): (node_id, pid, starttime) identifies a process, never the bare PID.
    ``cgroup`` is null or ``{"version": 1|2, "cpu": <dir>, "memory": <dir>}`` when the task runs in
    its own cgroup (the collector then reads its µs CPU and peak memory counters); v1 adds
    ``"cpuacct": <dir>`` (where the µs CPU counter lives).

Event log ``<node_id>/events.jsonl``: one JSON object per line with a ``kind``:
    ``exec``    the adapter, once per execution of an application (``EXEC_FIELDS``);
    ``reject``  the worker, a payload that failed validation: nothing ran (``REJECT_FIELDS``);
    ``fenced``  the worker, an execution whose completion the control plane refused because the
                task had been recovered and re-queued meanwhile (``FENCED_FIELDS``); the parser marks
                that attempt ``status = "fenced"``;
    ``failed``  the controller (``controller/events.jsonl``), a task given up after the maximum
                number of attempts or with an unreadable payload (``REJECT_FIELDS``).

Controller records in ``controller/events.jsonl`` besides ``failed`` (written by the Lua steps, ``ts`` = Redis TIME
ms, the controller's time base):
    ``requeue`` a task sent back to the head of q:pending (``REQUEUE_FIELDS``): ``attempt`` is the attempt it
                goes back as (n+1 when ``bump``, the same n when a placed-not-started task is handed back),
                ``node_id`` the node it came from (that node's capacity for it was reclaimed at ``ts``);
    ``release`` an accepted completion (``RELEASE_FIELDS``): the attempt's capacity went back to its node at ``ts``.

Samples ``<node_id>/samples.jsonl``: one JSON object per collector tick (``SAMPLE_TICK_FIELDS``)
    ``{"ts": wall_ms, "mono": mono_ms, "procs": [[...], ...]}``, one list per sampled process whose
    values are the ``SAMPLE_COLUMNS`` in their order (names, order and meaning are defined there
    only; writers build a list with ``sample_row``, readers find a value with ``SAMPLE_INDEX``).

Node metadata ``<node_id>/node.json``: ``NODE_META_FIELDS`` (collector); ``<node_id>/worker.json``:
    ``WORKER_META_FIELDS`` (worker registration).
"""

from __future__ import annotations

from dataclasses import dataclass

SENTINEL_FIELDS = ("trace_id", "attempt", "node_id", "pid", "starttime", "cgroup", "ts_created")

EVENT_KINDS = ("exec", "reject", "fenced", "failed", "requeue", "release")

EXEC_FIELDS = (
    "kind",  # "exec"
    "trace_id",
    "attempt",
    "node_id",
    "pid",
    "starttime",  # /proc/<pid>/stat field 22, clock ticks since boot
    "profile",
    "cpu_units",
    "ts_enqueue",  # controller ms (from the payload)
    "ts_dispatch",  # controller ms (placement time, from the payload)
    "ts_start",  # node wall ms (float) just before exec
    "ts_end",  # node wall ms = ts_start + (mono_end - mono_start)
    "mono_start",  # node monotonic ms
    "mono_end",
    "status",  # "ok" | "failed"
    "exit_code",  # int, or null when killed by a signal
    "signal",  # int or null
    "cpu_ms",  # exact user+system CPU from wait4 rusage
    "utime_ms",
    "stime_ms",
    "max_rss_kb",  # wait4 ru_maxrss
    "cg_cpu_us",  # task cgroup CPU total at exit (µs) or null
    "cg_peak_kb",  # task cgroup peak memory at exit or null
    "binding",  # "exclusive" | "shared" | "none"
    "binding_mechanism",  # "affinity" | "systemd-run" | "cgroup-v2" | "cgroup-v1" | "none" | "podman" | "docker"
    "cpuset",  # e.g. "0-1" or null
    "cpu_weight",
    "cpu_quota_pct",
    "input",
    "output",
    "bytes_in",
    "bytes_out",
    "error",  # null, or the reason / tail of stderr
    "argv",
    # launch stages (node wall ms, like ts_start; null when the adapter ran stand-alone): docs/internals.md
    "launch_path",  # "launcher" (forked from the worker's warm launcher) | "subprocess" (fresh interpreter) | null
    "ts_taken",  # the worker took the payload from q:<node>
    "ts_checked",  # payload checked (gate, duplicate, command built)
    "ts_bound",  # binding ready (cpuset allocated / weight chosen), launch requested
    "ts_forked",  # the adapter core runs in its own process (launcher: right after fork; subprocess: after imports)
    "ts_sentinel",  # the PID sentinel is written (the child, just before ts_start = exec)
    # containers (docs/containers.md): the container the application ran in (procfs.container_id of its process;
    # the runtime's id for a profile with a container) and its image (null without a container profile)
    "container_id",
    "container_image",
)

# the launch of one task, in order (node wall ms in the exec event; ts_dispatch is controller ms): dispatch ->
# taken -> checked -> bound -> forked -> sentinel -> start (exec). The audit's "Launch overhead" reads them.
LAUNCH_STAGES = ("ts_dispatch", "ts_taken", "ts_checked", "ts_bound", "ts_forked", "ts_sentinel", "ts_start")

REJECT_FIELDS = ("kind", "trace_id", "attempt", "node_id", "profile", "ts", "reason", "payload_excerpt")
FENCED_FIELDS = ("kind", "trace_id", "attempt", "node_id", "ts", "reason")
REQUEUE_FIELDS = ("kind", "trace_id", "attempt", "node_id", "ts", "bump", "reason")
RELEASE_FIELDS = ("kind", "trace_id", "attempt", "node_id", "ts", "outcome")

SAMPLE_TICK_FIELDS = ("ts", "mono", "procs")


# ---- sample columns ----
@dataclass(frozen=True)
class SampleColumn:
    """One value of a sampled process (one slot of a ``procs`` entry of ``samples.jsonl``)."""

    name: str
    meaning: str
    # False for a column appended after raw logs were already written: entries without it still parse (null).
    # Columns are appended, never reordered or removed: the position is the on-disk format.
    required: bool = True


SAMPLE_COLUMNS = (
    SampleColumn("pid", "process id"),
    SampleColumn("starttime", "field 22 of /proc/<pid>/stat (clock ticks since boot): with node and pid, the "
                              "process's identity (a bare pid is reused)"),
    SampleColumn("trace_id", "the task's trace_id (from its PID sentinel); null for a process matched by name "
                             "(PROC_MATCH) that is no traced task"),
    SampleColumn("cpu_ticks", "cumulative utime+stime+cutime+cstime of the process plus its live descendants, in "
                              "clock ticks (node.json clk_tck); cumulative, so CPU before the first tick is never "
                              "lost"),
    SampleColumn("rss_pages", "resident set of the process plus its live descendants, in pages (node.json page_size)"),
    SampleColumn("cg_cpu_us", "the task cgroup's cumulative CPU in µs when the task runs in its own cgroup, else null"),
    SampleColumn("cg_mem_kb", "the task cgroup's current memory in KB when the task runs in its own cgroup, else null"),
    SampleColumn("comm", "the command name (/proc/<pid>/stat field 2) of a process matched by name (PROC_MATCH); "
                         "null for a traced task (its exec event has the argv)", required=False),
    SampleColumn("container_id", "the id of the container the process runs in, from /proc/<pid>/cgroup (docker, "
                                 "podman, containerd, CRI-O, Kubernetes paths; procfs.container_id); null when none",
                 required=False),
)
SAMPLE_PROC_FIELDS = tuple(c.name for c in SAMPLE_COLUMNS)
SAMPLE_INDEX = {c.name: k for k, c in enumerate(SAMPLE_COLUMNS)}  # column name -> position in an entry
SAMPLE_MIN_VALUES = sum(c.required for c in SAMPLE_COLUMNS)  # an entry holds at least these (the required ones)
SAMPLE_MAX_VALUES = len(SAMPLE_COLUMNS)


def sample_row(*, pid, starttime, trace_id, cpu_ticks, rss_pages, cg_cpu_us, cg_mem_kb, comm=None,
               container_id=None) -> list:
    """One ``procs`` entry of ``samples.jsonl``, its values in ``SAMPLE_COLUMNS`` order (every writer of samples
    builds entries here; the parameters are checked against ``SAMPLE_COLUMNS`` when this module loads)."""
    return [pid, starttime, trace_id, cpu_ticks, rss_pages, cg_cpu_us, cg_mem_kb, comm, container_id]


def _check_sample_columns() -> None:
    code = sample_row.__code__
    params = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    if params != SAMPLE_PROC_FIELDS:
        raise RuntimeError(f"schema.sample_row takes {params}, SAMPLE_COLUMNS say {SAMPLE_PROC_FIELDS}")
    if any(not c.required for c in SAMPLE_COLUMNS[:SAMPLE_MIN_VALUES]):
        raise RuntimeError("schema.SAMPLE_COLUMNS: optional columns come after every required one")


_check_sample_columns()


NODE_META_FIELDS = (
    "node_id",
    "stage",
    "hostname",
    "cpu_cores",
    "cpu_model",
    "cpu_freq_mhz",  # per-core nominal MHz (None when unknown: export then needs --cpu-freq-mhz)
    "mem_mb",
    "clk_tck",
    "page_size",
    "boot_time_ms",
    "clock",  # {"offset_ms", "rtt_ms", "measured_at_ms"} to the controller (Redis TIME)
    "collector",  # {"mode", "interval_ms", "started_ms", "stopped_ms", "cpu_s", "ticks", "samples"} (+ late_ticks...)
    "clock_stop",  # like "clock", measured when the collector stopped (drift over the run); null until then
)

WORKER_META_FIELDS = (
    "node_id",
    "cpu_cores",
    "mem_mb",
    "capacity",
    "allocation_ratio",
    "parallel",
    "binding",
    "cpuweight_per_vcpu",
    "clock",
    "started_ms",
)

# ---- CTS fields (docs/traces.md): original names kept first; fields are added, never renamed ----
INVOCATION_FIELDS = (
    "trace_id",
    "pid",
    "ts_enqueue",
    "ts_start",
    "ts_end",
    "node_id",
    "attempt",
    "profile",
    "cpu_units",
    "ts_dispatch",
    "status",  # "ok" | "failed" | "fenced"
    "exit_code",
    "cpu_ms",
    "max_rss_kb",
    "input",
    "output",
    "bytes_in",
    "bytes_out",
    "binding",
    "binding_mechanism",
    "cpuset",
    "starttime",
    "error",
    "ts_release",  # controller ms: the attempt's capacity went back to its node (release or requeue record)
    "ts_requeue",  # controller ms: when this attempt (n > 1) was re-queued (the requeue record that created it)
    "container_id",  # the container the application ran in, null when none (docs/containers.md)
    "container_image",  # the image of a container profile's container, else null
)

# ---- matched processes (docs/internals.md, CTS): processes sampled by name (PROC_MATCH) that no adapter launched ----
# one line per process of processes.jsonl, keyed by (node_id, pid, starttime); times controller ms like every CTS ts
MATCHED_PROCESS_FIELDS = (
    "node_id",
    "pid",
    "starttime",
    "comm",  # command name at its last sample
    "container_id",  # container it ran in (last sample), null when none
    "ts_first",  # first and last sample (controller ms)
    "ts_last",
    "samples",
    "cpu_ms",  # CPU used between its first and last sample (cumulative counter difference), ms
    "cpu_ms_total",  # CPU since the process started, at its last sample (the counter itself), ms
    "max_rss_kb",  # largest RSS sampled, KB (null when never known)
)

PROC_METRIC_FIELDS = ("ts_ms", "pid", "dt_ms", "cpu_ms", "rss_kb", "node_id", "trace_id", "attempt", "starttime",
                      "container_id")  # container_id: the task's (its invocation's), null when none

NODE_FIELDS = (
    "node_id",
    "stage",
    "cpu_cores",
    "mem_mb",
    "cpu_model",
    "cpu_freq_mhz",
    "capacity",
    "allocation_ratio",
    "parallel",
    "binding",
    "clock_offset_ms",
    "clock_rtt_ms",
    "clk_tck",
    "page_size",
    "hostname",  # node.json: the node's host name
    "boot_time_ms",  # node.json: kernel boot time; nodes with the same one share one kernel (and its cores)
)

# ---- services and requests (docs/services.md) ----
# ``<node_id>/services.jsonl``: one line per state change of a service task the worker runs (``SERVICE_FIELDS``):
# state "ready" (the readiness check passed) or "stopping" (why: ``stop_reason``), node wall ms like ``ts_start``.
SERVICE_FIELDS = ("kind", "trace_id", "attempt", "node_id", "ts", "state", "host", "port", "url", "stop_reason")
SERVICE_STATES = ("starting", "ready", "stopping", "stopped")

# ``controller/requests/<trace_id>.jsonl``: one line per request the load generator sent (``REQUEST_RAW_FIELDS``).
# Times are epoch ms with µs precision (3 decimals), already in the controller's time base (the load generator
# adds its measured clock offset, recorded in ``<trace_id>.meta.json``, ``LOADGEN_META_FIELDS``).
REQUEST_RAW_FIELDS = (
    "request_id",  # "<trace_id>-r<n>": unique in the run
    "trace_id",  # the service task the request went to
    "method",
    "path",
    "ts_sched",  # when the schedule wanted it sent (open loop: the arrival time; closed loop: = ts_send)
    "ts_send",  # the request's first bytes were handed to the socket (send)
    "ts_first_byte",  # the first response bytes came off the socket (recv; null when none came)
    "ts_end",  # the last response bytes came off the socket, or the error happened
    "status",  # HTTP status code, or null on an error
    "req_bytes",  # request body bytes sent
    "resp_bytes",  # response body bytes received
    "error",  # null, or "timeout" / the connection error in one line
    "server_ms",  # the service's own handling time from its response header (null when it sends none)
)
LOADGEN_META_FIELDS = ("trace_id", "target", "mode", "rate", "concurrency", "arrival", "seed", "duration_s",
                       "count", "timeout_s", "mix", "clock_offset_ms", "clock_rtt_ms", "ts_begin", "ts_finish",
                       "sent", "errors", "cpu_s")

# ``CTS/requests.jsonl``: the raw lines linked to the service's process identity (node_id, pid, starttime)
REQUEST_FIELDS = (*REQUEST_RAW_FIELDS[:2], "node_id", "pid", "starttime", "attempt", *REQUEST_RAW_FIELDS[2:],
                  "latency_ms")
# the header a service may send with its own handling time in microseconds (the demo service does)
SERVER_TIME_HEADER = "X-Handle-Us"
