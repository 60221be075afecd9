"""Emulated cluster network: real namespaces, a real password-protected redis-server on the bridge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tracekit.cluster import netns
from tracekit.cluster.redis_server import RedisServer
from tracekit.cluster.supervisor import Supervisor
from tracekit.core.errors import Unsupported

OK, WHY = netns.namespaces_available()
needs_netns = pytest.mark.skipif(not OK, reason=f"network namespaces unavailable here: {WHY}")

# A client that runs inside a node: PING with the password from the environment (never argv).
PING = (
    "import os,sys,redis\n"
    "from redis.backoff import NoBackoff\n"
    "from redis.retry import Retry\n"
    "pw=os.environ.get('TRACEKIT_REDIS_PASSWORD')\n"
    "try:\n"
    " r=redis.Redis(host=sys.argv[1],port=int(sys.argv[2]),password=pw,socket_timeout=1,\n"
    "               socket_connect_timeout=1,retry=Retry(NoBackoff(),0))\n"
    " print('PONG' if r.ping() else 'NO')\n"
    "except redis.AuthenticationError: print('AUTH')\n"
    "except redis.ResponseError as e: print('AUTH' if 'NOAUTH' in str(e) else 'ERR')\n"
    "except (redis.ConnectionError, redis.TimeoutError, OSError): print('UNREACHABLE')\n"
)


def ping_from(net, node: str, srv: RedisServer, password: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRACEKIT_REDIS_PASSWORD"}
    if password:
        env["TRACEKIT_REDIS_PASSWORD"] = password
    out = subprocess.run(net.wrap(node, [sys.executable, "-c", PING, srv.host, str(srv.port)]), env=env,
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def namespaces_and_links() -> tuple[set[str], str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return set(netns.list_namespaces()), links


@needs_netns
def test_node_reaches_bridge_redis_with_password_and_cut_heal_work(tmp_path):
    with netns.make_network(["node1", "node2"], mode="1") as net:
        assert net.emulated and net.gateway.startswith(netns.SUBNET_PREFIX + ".")
        srv = RedisServer(host=net.gateway, workdir=tmp_path / "redis").start()
        try:
            assert ping_from(net, "node1", srv, srv.password) == "PONG"
            assert ping_from(net, "node1", srv, None) == "AUTH"  # reachable, but the password is required
            assert ping_from(net, "node1", srv, "wrong-password-xyz") == "AUTH"
            host = subprocess.run(net.wrap("node2", ["hostname"]), capture_output=True, text=True).stdout.strip()
            assert host == "node2" and os.uname().nodename != "node2"

            net.cut("node1")
            assert net.is_cut("node1") and not net.is_cut("node2")
            assert ping_from(net, "node1", srv, srv.password) == "UNREACHABLE"
            assert ping_from(net, "node2", srv, srv.password) == "PONG"  # only node1 is cut off

            net.heal("node1")
            assert not net.is_cut("node1")
            assert ping_from(net, "node1", srv, srv.password) == "PONG"
        finally:
            srv.stop()
        names = {net.netns("node1"), net.netns("node2")}
        bridge, state_file = net.state.bridge, net.state.path()
        assert names <= set(netns.list_namespaces()) and state_file.exists()
    spaces, links = namespaces_and_links()
    assert not names & spaces
    assert bridge not in links
    assert not state_file.exists()


@needs_netns
def test_loopback_of_host_is_not_reachable_from_a_node(redis_server):
    """Nodes talk only over their link: the test session's loopback Redis is invisible inside."""
    with netns.make_network(["a"], mode="1") as net:
        assert ping_from(net, "a", redis_server, redis_server.password) == "UNREACHABLE"


@needs_netns
def test_a_node_sees_the_hosts_cgroups_and_its_own_hostname():
    """Shared binding inside a node needs the host's cgroup hierarchies (`ip netns exec` would hide them)."""
    from tracekit.node import binding

    host_mech = binding.detect_shared_mechanism()
    code = ("import socket; from tracekit.node import binding; "
            "print(socket.gethostname(), binding.detect_shared_mechanism())")
    with netns.make_network(["cg"], mode="1") as net:
        out = subprocess.run(net.wrap("cg", [sys.executable, "-c", code]), capture_output=True, text=True,
                             timeout=30, env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "tools")))
    assert out.stdout.split() == ["cg", host_mech], out.stderr[-500:]


@needs_netns
def test_stale_network_of_a_killed_owner_is_removed(tmp_path):
    code = ("import sys,time; sys.path.insert(0, sys.argv[1]); from tracekit.cluster import netns\n"
            "n = netns.make_network(['x1','x2'], mode='1'); print(n.state.tag, flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(netns.Path(netns.__file__).parents[1])],
                             stdout=subprocess.PIPE, text=True)
    tag = owner.stdout.readline().strip()
    assert tag, "the owner did not create its network"
    state = json.loads((netns.STATE_DIR / f"{tag}.json").read_text())
    spaces = {lk["netns"] for lk in state["links"]}
    assert spaces <= set(netns.list_namespaces())
    assert tag not in netns.cleanup_stale()  # the owner is alive: its network stays
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert tag in netns.cleanup_stale()
    left, links = namespaces_and_links()
    assert not spaces & left and state["bridge"] not in links
    assert not (netns.STATE_DIR / f"{tag}.json").exists()


@needs_netns
def test_teardown_kills_processes_left_in_a_namespace():
    net = netns.make_network(["p1"], mode="1")
    proc = subprocess.Popen(net.wrap("p1", ["sleep", "60"]), start_new_session=True)
    time.sleep(0.3)
    assert net.teardown() == []
    assert proc.wait(5) is not None
    assert net.state is None


def test_fallback_runs_plain_processes_with_distinct_node_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEKIT_LOGS", str(tmp_path / "logs"))
    net = netns.make_network(["n1", "n2"], mode="0")
    assert not net.emulated and "TRACEKIT_NETNS=0" in net.reason and "plain processes" in net.describe()
    assert net.gateway == "127.0.0.1"
    with pytest.raises(Unsupported, match="no network namespaces"):
        net.cut("n1")
    sup = Supervisor("fb", wrap=net.wrap, grace_s=2)
    code = "import os,time; print('NODE', os.environ['NODE_ID'], flush=True); time.sleep(30)"
    for n in net.nodes:
        sup.start(n, "worker", [sys.executable, "-c", code], env={**os.environ, "NODE_ID": n})
    deadline = time.monotonic() + 10
    logs = {}
    while time.monotonic() < deadline and len(logs) < 2:
        for n in net.nodes:
            text = sup.get(n, "worker").log.read_text()
            if f"NODE {n}" in text:
                logs[n] = text
        time.sleep(0.05)
    assert set(logs) == {"n1", "n2"}
    sup.stop_all()
    assert sup.leftovers() == []


def test_fallback_when_namespaces_are_required_but_disabled(monkeypatch):
    monkeypatch.setenv("TRACEKIT_NETNS", "0")
    net = netns.make_network(["n1"])
    assert not net.emulated
    with pytest.raises(Unsupported, match="required"):
        monkeypatch.setattr(netns, "namespaces_available", lambda: (False, "not root"))
        netns.make_network(["n1"], mode="1")


@needs_netns
def test_two_emulations_coexist_on_distinct_subnets(tmp_path):
    with netns.make_network(["n1"], mode="1") as a, netns.make_network(["n1"], mode="1") as b:
        assert a.state.subnet != b.state.subnet and a.netns("n1") != b.netns("n1")
        srv = RedisServer(host=b.gateway, workdir=tmp_path / "r").start()
        try:
            assert ping_from(b, "n1", srv, srv.password) == "PONG"
            assert ping_from(a, "n1", srv, srv.password) == "UNREACHABLE"  # other emulation's Redis: not routed
        finally:
            srv.stop()
