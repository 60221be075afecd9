"""Emulated cluster network: one Linux bridge, one network namespace per node (docs/cluster.md, "The emulated
network").

Layout (``tag`` = 4 hex digits, unique per live network so two emulations never collide)::

    host (controller)                 node namespaces  tk<tag>-<node>
    bridge tkbr<tag>  10.213.K.1/24 ── veth tkv<tag><i> ══ eth0 10.213.K.(i+2)/24 (inside the namespace)

``K`` is the first third octet not used by another live network or host address (0 when free).
The private redis-server binds to the bridge address, so a node reaches Redis only over its own
link: :meth:`Network.cut` sets the host end of that link down (no iptables/nft on this class of
machine; a down link also makes the kernel drop in-flight packets, like a pulled cable);
:meth:`Network.heal` sets it up again. Processes get their own hostname (the node id) through
``unshare --uts`` in :meth:`Network.wrap`.

Crash safety: the state of every network (owner pid + start time, names) is written to
``/run/tracekit-netns/<tag>.json`` *before* anything is created. :func:`cleanup_stale` removes every
network whose owner is dead (also the remains of a SIGKILLed run), and runs before each new network.
Where namespaces cannot be used (not root, no ``ip``/``unshare``, ``TRACEKIT_NETNS=0``),
:func:`make_network` returns a :class:`PlainNetwork`: plain processes with distinct ``NODE_ID``s on
loopback, and a reason saying why.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tracekit.core.errors import Conflict, Unsupported, UsageError

STATE_DIR = Path(os.environ.get("TRACEKIT_NETNS_STATE", "/run/tracekit-netns"))
SUBNET_PREFIX = "10.213"  # 10.213.K.0/24: private, exists only inside this machine
NETNS_ENV = "TRACEKIT_NETNS"  # "0" forces plain processes, "1" requires namespaces, else auto
LOOPBACK = "127.0.0.1"
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` binds the named namespaces (iproute2)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS``; on failure raise Unsupported with ip's own one-line message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise Unsupported(f"ip {' '.join(args)}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc


def _proc_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def namespaces_available() -> tuple[bool, str]:
    """Whether network namespaces can be used here, and if not, why (one line)."""
    if os.environ.get(NETNS_ENV, "").strip() == "0":
        return False, f"{NETNS_ENV}=0"
    if os.geteuid() != 0:
        return False, "not root (network namespaces need CAP_NET_ADMIN)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' not found (apt-get install -y iproute2 util-linux)"
    probe = f"tkprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return False, f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        # the per-node hostname needs a UTS namespace too
        uts = subprocess.run(["nsenter", f"--net={NETNS_RUN_DIR}/{probe}", "unshare", "--uts", "--", "true"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)
    finally:
        _ip("netns", "del", probe, check=False)
    if uts.returncode != 0:
        return False, f"cannot enter a namespace with its own hostname: {uts.stderr.strip()[-200:]}"
    return True, "network namespaces"


@dataclass
class NodeLink:
    """One node's place on the emulated network."""

    node: str
    netns: str
    host_if: str
    addr: str


@dataclass
class NetState:
    """What :func:`cleanup_stale` needs to remove a network whose owner died."""

    tag: str
    owner_pid: int
    owner_start: float | None
    subnet: str
    bridge: str
    links: list[NodeLink] = field(default_factory=list)

    def path(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path())

    @classmethod
    def load(cls, path: Path) -> NetState:
        d = json.loads(path.read_text())
        d["links"] = [NodeLink(**x) for x in d.get("links", [])]
        return cls(**d)

    def owner_alive(self) -> bool:
        start = _proc_start(self.owner_pid)
        return start is not None and (self.owner_start is None or abs(start - self.owner_start) < 0.5)


def _kill_netns_pids(netns: str, grace: float = 2.0) -> None:
    """Stop every process still inside ``netns`` (SIGTERM, then SIGKILL): a namespace outlives its
    deletion while a process holds it."""
    out = _ip("netns", "pids", netns, check=False)
    pids = [int(p) for p in out.stdout.split() if p.isdigit()]
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def _remove(state: NetState) -> list[str]:
    """Remove everything ``state`` names; never raises; returns what could not be removed."""
    problems = []
    existing = set(list_namespaces())
    for link in state.links:
        if link.netns in existing:
            _kill_netns_pids(link.netns)
            r = _ip("netns", "del", link.netns, check=False)
            if r.returncode != 0:
                problems.append(f"netns {link.netns}: {r.stderr.strip()}")
        # deleting the namespace destroys the peer and hence the pair; this catches a half-made pair
        _ip("link", "del", link.host_if, check=False)
    if _link_exists(state.bridge):
        r = _ip("link", "del", state.bridge, check=False)
        if r.returncode != 0:
            problems.append(f"bridge {state.bridge}: {r.stderr.strip()}")
    if not problems:
        state.path().unlink(missing_ok=True)
    return problems


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to ``ip netns``."""
    if shutil.which("ip") is None:
        return []
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def live_states() -> list[NetState]:
    """States of networks whose owner still runs."""
    out = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            st = NetState.load(path)
        except (OSError, ValueError, TypeError):
            continue
        if st.owner_alive():
            out.append(st)
    return out


def cleanup_stale() -> list[str]:
    """Remove networks (namespaces, veths, bridge) left by owners that are gone; return their tags."""
    removed = []
    if not STATE_DIR.is_dir():
        return removed
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            st = NetState.load(path)
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not st.owner_alive():
            _remove(st)
            removed.append(st.tag)
    return removed


def _pick_subnet(taken: set[str]) -> ipaddress.IPv4Network:
    out = _ip("-4", "-o", "addr", "show", check=False).stdout
    host_addrs = {ipaddress.ip_interface(w).network for line in out.splitlines()
                  for i, w in enumerate(line.split()) if i > 0 and line.split()[i - 1] == "inet"}
    for k in range(256):
        net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{k}.0/24")
        if str(net) not in taken and not any(net.overlaps(h) for h in host_addrs):
            return net
    raise Conflict(f"no free /24 left in {SUBNET_PREFIX}.0.0/16 for the emulated network")


class Network:
    """N node namespaces on one bridge. Use as a context manager or call :meth:`teardown`."""

    emulated = True

    def __init__(self, nodes: list[str]) -> None:
        if len(nodes) > 250:
            raise UsageError(f"at most 250 emulated nodes per network (asked for {len(nodes)})")
        self.nodes = list(nodes)
        self.reason = "network namespaces"
        self.state: NetState | None = None

    # --- life cycle ---
    def create(self) -> Network:
        """Clean stale networks, then build the bridge and one namespace + veth per node."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # one creator at a time: two emulations started together must not pick the same subnet
        with open(STATE_DIR / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cleanup_stale()
            taken = {st.subnet for st in live_states()}
            tag = secrets.token_hex(2)
            while (STATE_DIR / f"{tag}.json").exists():
                tag = secrets.token_hex(2)
            net = _pick_subnet(taken)
            hosts = list(net.hosts())
            me = os.getpid()
            self.state = NetState(tag=tag, owner_pid=me, owner_start=_proc_start(me), subnet=str(net),
                                  bridge=f"tkbr{tag}",
                                  links=[NodeLink(node=n, netns=f"tk{tag}-{n}", host_if=f"tkv{tag}{i}",
                                                  addr=str(hosts[i + 1])) for i, n in enumerate(self.nodes)])
            self.state.save()  # before creating anything: a crash from here on is cleaned next time
            self._build(net, tag)
        return self

    def _build(self, net: ipaddress.IPv4Network, tag: str) -> None:
        try:
            st = self.state
            _ip("link", "add", st.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{net.prefixlen}", "dev", st.bridge)
            _ip("link", "set", st.bridge, "up")
            for i, link in enumerate(st.links):
                peer = f"tkp{tag}{i}"
                _ip("netns", "add", link.netns)
                _ip("link", "add", link.host_if, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", link.netns)
                _ip("-n", link.netns, "link", "set", peer, "name", "eth0")
                _ip("-n", link.netns, "addr", "add", f"{link.addr}/{net.prefixlen}", "dev", "eth0")
                _ip("-n", link.netns, "link", "set", "lo", "up")
                _ip("-n", link.netns, "link", "set", "eth0", "up")
                _ip("link", "set", link.host_if, "master", st.bridge, "up")
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> list[str]:
        """Remove everything this network created (kills processes left inside); never raises."""
        if self.state is None:
            return []
        problems = _remove(self.state)
        self.state = None
        return problems

    def __enter__(self) -> Network:
        return self if self.state is not None else self.create()

    def __exit__(self, *exc) -> None:
        self.teardown()

    # --- addressing ---
    def _link(self, node: str) -> NodeLink:
        if self.state is None:
            raise RuntimeError("the emulated network is not created")  # a call out of order: a bug
        for link in self.state.links:
            if link.node == node:
                return link
        raise UsageError(f"unknown node {node!r} (nodes: {', '.join(self.nodes)})")

    @property
    def gateway(self) -> str:
        """The controller's address on the bridge: Redis binds here."""
        assert self.state is not None
        return str(next(ipaddress.ip_network(self.state.subnet).hosts()))

    def addr(self, node: str) -> str:
        return self._link(node).addr

    def netns(self, node: str) -> str:
        return self._link(node).netns

    # --- processes ---
    def wrap(self, node: str, argv: list[str]) -> list[str]:
        """argv that runs ``argv`` inside ``node``'s namespace with hostname = node id.

        Every step execs (no fork), so the returned process id is the command's own. ``nsenter --net``, not
        ``ip netns exec``: the latter remounts /sys in a private mount namespace, which hides the host's
        cgroup hierarchies, so a node could not give its shared-mode tasks their own cgroups.
        """
        link = self._link(node)
        return ["nsenter", f"--net={NETNS_RUN_DIR}/{link.netns}", "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', node, *argv]

    # --- faults (used by the chaos harness) ---
    def cut(self, node: str) -> None:
        """Cut ``node`` off the network: its link to the bridge goes down."""
        _ip("link", "set", self._link(node).host_if, "down")

    def heal(self, node: str) -> None:
        """Reconnect ``node`` (undo :meth:`cut`)."""
        _ip("link", "set", self._link(node).host_if, "up")

    def is_cut(self, node: str) -> bool:
        out = _ip("-o", "link", "show", "dev", self._link(node).host_if).stdout
        flags = re.search(r"<([^>]*)>", out)
        return not flags or "UP" not in flags.group(1).split(",")

    def describe(self) -> str:
        assert self.state is not None
        nodes = ", ".join(f"{lk.node}={lk.addr}" for lk in self.state.links)
        return (f"network namespaces on bridge {self.state.bridge} {self.state.subnet} "
                f"(redis at {self.gateway}): {nodes}")


class PlainNetwork:
    """Fallback: nodes are plain processes on this host with distinct ``NODE_ID``s, Redis on loopback."""

    emulated = False

    def __init__(self, nodes: list[str], reason: str) -> None:
        self.nodes = list(nodes)
        self.reason = reason
        self.gateway = LOOPBACK

    def create(self) -> PlainNetwork:
        return self

    def teardown(self) -> list[str]:
        return []

    def __enter__(self) -> PlainNetwork:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def addr(self, node: str) -> str:
        return LOOPBACK

    def wrap(self, node: str, argv: list[str]) -> list[str]:
        return list(argv)

    def cut(self, node: str) -> None:
        raise Unsupported(f"cannot cut {node} off: no network namespaces here ({self.reason})")

    heal = cut

    def is_cut(self, node: str) -> bool:
        return False

    def describe(self) -> str:
        return (f"plain processes on this host with distinct NODE_IDs ({', '.join(self.nodes)}); "
                f"network namespaces not used: {self.reason}")


def make_network(nodes: list[str], mode: str | None = None) -> Network | PlainNetwork:
    """A created :class:`Network` when namespaces work (``mode`` auto/"1"), else a :class:`PlainNetwork`.

    ``mode`` defaults to ``$TRACEKIT_NETNS``; "1" makes unavailability an error instead of a fallback.
    """
    mode = (mode if mode is not None else os.environ.get(NETNS_ENV, "auto")).strip() or "auto"
    if mode == "0":
        return PlainNetwork(nodes, f"{NETNS_ENV}=0")
    ok, why = namespaces_available()
    if not ok:
        if mode == "1":
            raise Unsupported(f"network namespaces required ({NETNS_ENV}=1) but unavailable: {why}")
        return PlainNetwork(nodes, why)
    return Network(nodes).create()


def wait_reachable(network: Network | PlainNetwork, node: str, host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether a TCP connect from inside ``node`` to host:port succeeds within ``timeout``."""
    code = ("import socket,sys,time\nd=time.time()+float(sys.argv[3])\n"
            "while True:\n try:\n  socket.create_connection((sys.argv[1],int(sys.argv[2])),1).close();break\n"
            " except OSError:\n  time.sleep(0.05)\n  if time.time()>d: sys.exit(1)\n")
    argv = network.wrap(node, [sys.executable, "-c", code, host, str(port), str(timeout)])
    return subprocess.run(argv, capture_output=True, timeout=timeout + 10).returncode == 0
