"""make demo's settings: run id choice, run_id.env, variables from the environment, clear errors."""

from __future__ import annotations

import pytest

from tracekit.cluster import demo
from tracekit.cluster.emulation import Cluster, ClusterConfig, require_scripts
from tracekit.core.errors import DependencyMissing, UsageError


def test_run_id_from_run_id_env_is_not_reused_unless_given_on_make_command_line(tmp_path):
    f = tmp_path / "run_id.env"
    demo.write_run_id_file("old-run", f)
    # make exports RUN_ID from run_id.env: that alone means "make a new one"
    assert demo.explicit_run_id({"RUN_ID": "old-run"}, f) is None
    assert demo.explicit_run_id({"RUN_ID": "old-run", "MAKEFLAGS": " -- RUN_ID=old-run NODES=3"}, f) == "old-run"
    assert demo.explicit_run_id({"RUN_ID": "x"}, f) == "x"
    assert demo.explicit_run_id({}, f) is None


def test_write_run_id_file_keeps_other_lines(tmp_path):
    f = tmp_path / "run_id.env"
    f.write_text("RUN_ID=a\nexport TRACEKIT_REDIS_URL=redis://10.0.0.5:6379/0\n")
    demo.write_run_id_file("b", f)
    assert f.read_text() == "export RUN_ID=b\nexport TRACEKIT_REDIS_URL=redis://10.0.0.5:6379/0\n"
    from tracekit.core.paths import read_run_id_file

    assert read_run_id_file(f) == "b"
    assert demo.new_run_id("demo").startswith("demo-") and demo.new_run_id() != demo.new_run_id()


def test_variables_come_from_the_environment(monkeypatch, tmp_path):
    for k, v in dict(NODES="3", TOTAL="5", MIX="light1c=1", SEED="7", WEIGHER="vcpu", BINDING="shared",
                     RATIO="1.5", RUN_ID="", TRACEKIT_RUN_ID_FILE=str(tmp_path / "r.env")).items():
        monkeypatch.setenv(k, v)
    cfg = demo.parse_args([])
    assert (cfg.nodes, cfg.total, cfg.mix, cfg.seed, cfg.weigher, cfg.binding, cfg.ratio) == \
        (3, 5, "light1c=1", 7, "vcpu", "shared", 1.5)
    assert cfg.run_id is None and cfg.run_id_file == tmp_path / "r.env"
    assert demo.parse_args(["--run-id", "x", "--nodes", "1"]).run_id == "x"


@pytest.mark.parametrize("env, words", [({"NODES": "two"}, "bad NODES"), ({"NODES": "0"}, "NODES must be"),
                                        ({"TOTAL": "0"}, "TOTAL must be"), ({"RATIO": "-1"}, "RATIO must be")])
def test_bad_variables_are_one_line_errors(monkeypatch, env, words):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError, match=words):
        demo.parse_args([])


def test_missing_script_is_named(monkeypatch, tmp_path):
    from tracekit.cluster import emulation

    monkeypatch.setattr(emulation, "TOOLS", tmp_path)
    with pytest.raises(DependencyMissing, match=r"tools/scheduler/worker.py is missing"):
        require_scripts(["worker"])


def test_cluster_rejects_zero_nodes_and_unknown_node():
    with pytest.raises(UsageError, match="NODES"):
        Cluster(ClusterConfig(run_id="r", nodes=0))
    cl = Cluster(ClusterConfig(run_id="r", nodes=2))
    assert cl.node_ids == ["node1", "node2"]
    with pytest.raises(UsageError, match="unknown node"):
        cl.start_node_processes("node9")


def test_cluster_env_carries_password_only_in_env_and_no_public_ntp(redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEKIT_LOGS", str(tmp_path))
    monkeypatch.setenv("TRACEKIT_REDIS_PASSWORD", redis_server.password)
    with Cluster(ClusterConfig(run_id="r", nodes=2, redis_url=redis_server.url, netns_mode="0")) as cl:
        assert not cl.emulated and "loopback" not in cl.net.reason  # netns_mode=0 says so itself
        env = cl.env("node2")
        assert env["NODE_ID"] == "node2" and env["TRACEKIT_REDIS_PASSWORD"] == redis_server.password
        assert env["TRACEKIT_REDIS_URL"] == redis_server.url and redis_server.password not in env["TRACEKIT_REDIS_URL"]
        assert env["TIME_SYNC"] == "0" and "NODE_ID" not in cl.env(None)
        assert cl.client().ping()
        assert all(redis_server.password not in a for a in cl.worker_argv() + cl.scheduler_argv())


def test_external_loopback_redis_falls_back_to_plain_processes_and_says_why(redis_server, monkeypatch, tmp_path):
    monkeypatch.setenv("TRACEKIT_LOGS", str(tmp_path))
    monkeypatch.setenv("TRACEKIT_REDIS_PASSWORD", redis_server.password)
    with Cluster(ClusterConfig(run_id="r", nodes=1, redis_url=redis_server.url, netns_mode="auto")) as cl:
        assert not cl.emulated and "loopback" in cl.net.reason and "plain processes" in cl.describe()
