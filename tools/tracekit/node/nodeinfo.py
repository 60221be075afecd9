"""Node metadata for ``<node_id>/node.json`` (schema.NODE_META_FIELDS): hardware, units, clock offset."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from tracekit.core.clock import redis_clock_offset
from tracekit.core.errors import TracekitError
from tracekit.node import procfs

UNKNOWN_CLOCK = {"offset_ms": None, "rtt_ms": None, "measured_at_ms": None}


def mem_mb() -> int | None:
    """MemTotal of /proc/meminfo in MiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def cpu_model_and_mhz(cpuinfo: str | None = None, max_freq_khz: str | None = None) -> tuple[str | None, float | None]:
    """CPU model name and per-core nominal MHz.

    MHz, best first: the ``@ 2.40GHz`` of the model name (nominal), cpufreq's ``cpuinfo_max_freq``,
    then ``cpu MHz`` of /proc/cpuinfo (the current clock, good enough on VMs that pin it).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    model = m.group(1).strip() if m else None
    if model:
        g = re.search(r"@\s*([0-9.]+)\s*GHz", model)
        if g:
            return model, round(float(g.group(1)) * 1000, 1)
    if max_freq_khz is None:
        try:
            max_freq_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        except OSError:
            max_freq_khz = None
    if max_freq_khz and max_freq_khz.strip().isdigit():
        return model, round(int(max_freq_khz) / 1000, 1)
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    return model, (round(float(m.group(1)), 1) if m else None)


def measure_clock(timeout_s: float = 2.0) -> dict:
    """Offset and round trip to the controller's clock (Redis TIME); unknown (with the reason) if unreachable."""
    try:
        from tracekit.core.redis_conn import connect

        client = connect(socket_timeout=timeout_s)
        try:
            return redis_clock_offset(client).as_dict()
        finally:
            client.close()
    except TracekitError as exc:
        return dict(UNKNOWN_CLOCK, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - metadata must never stop the collector
        return dict(UNKNOWN_CLOCK, error=f"{type(exc).__name__}: {exc}")


def default_iface(vm_ip: str | None = None, route_table: str | None = None) -> str | None:
    """The network interface toward ``vm_ip`` (the original's ``VM_IP``: the controller's address) when ``ip``
    can say, else the default route's interface from /proc/net/route (``route_table`` = its text, for tests)."""
    if vm_ip and vm_ip not in ("127.0.0.1", "localhost") and route_table is None:
        try:
            out = subprocess.run(["ip", "route", "get", vm_ip], capture_output=True, text=True, timeout=2).stdout
            m = re.search(r"\bdev\s+(\S+)", out)
            if m:
                return m.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
    if route_table is None:
        try:
            route_table = Path("/proc/net/route").read_text()
        except OSError:
            return None
    for line in route_table.splitlines()[1:]:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000":
            return f[0]
    return None


def node_meta(node_id: str, stage: str | None, clock: dict | None = None, collector: dict | None = None,
              cpu_freq_mhz: float | None = None) -> dict:
    """The ``node.json`` object for this host; ``cpu_freq_mhz`` (``CPU_FREQ_MHZ``) wins over what /proc says."""
    model, mhz = cpu_model_and_mhz()
    if cpu_freq_mhz is not None:
        mhz = cpu_freq_mhz
    return {
        "node_id": node_id,
        "stage": stage,
        "hostname": socket.gethostname(),
        "cpu_cores": os.cpu_count(),
        "cpu_model": model,
        "cpu_freq_mhz": mhz,
        "mem_mb": mem_mb(),
        "clk_tck": procfs.CLK_TCK,
        "page_size": procfs.PAGE_SIZE,
        "boot_time_ms": procfs.boot_time_ms(),
        "clock": clock if clock is not None else dict(UNKNOWN_CLOCK),
        "collector": collector or {},
        "clock_stop": None,
    }
