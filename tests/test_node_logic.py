"""Pure logic of the node side: no Redis, no ffmpeg, no cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.core.errors import Unsupported, UsageError
from tracekit.node import binding, nodeinfo, procfs, timesync, videos


def test_fair_quotas_max_min():
    # 3 tasks of 1, 2 and 4 CPUs on 4 cores: the small one gets its demand, the rest share equally
    q = binding.fair_quotas({"a": 100, "b": 200, "c": 400}, 400)
    assert q["a"] == pytest.approx(100)
    assert q["b"] == pytest.approx(150)
    assert q["c"] == pytest.approx(150)
    assert sum(q.values()) == pytest.approx(400)


def test_tasks_with_their_own_quota_shrink_what_the_others_share():
    # 2 cores, a task fixed itself at 150 %: two 1-unit tasks share the 50 % it leaves, not 200 %
    cap = binding.shared_capacity(2, reserved_pct=150)
    assert cap == pytest.approx(50)
    assert binding.fair_quotas({"a": 100, "b": 100}, cap) == {"a": pytest.approx(25), "b": pytest.approx(25)}
    # fixed quotas beyond the node: the sharing never gets 0 (a quota of 0 would mean unlimited)
    assert binding.shared_capacity(2, reserved_pct=500) == 1.0
    assert binding.shared_capacity(4) == 400.0


def test_fair_quotas_enough_capacity_gives_demands():
    q = binding.fair_quotas({("t1", 1): 200, ("t2", 1): 100}, 800)
    assert q == {("t1", 1): 200, ("t2", 1): 100}


def test_fair_quotas_equal_demands_split_evenly_and_never_exceed_demand():
    q = binding.fair_quotas({i: 200 for i in range(3)}, 200)
    assert all(v == pytest.approx(200 / 3) for v in q.values())
    q = binding.fair_quotas({"x": 50, "y": 1000}, 400)
    assert q == {"x": 50, "y": 350}
    assert binding.fair_quotas({}, 200) == {}


def test_quota_and_weight_conversions():
    assert binding.quota_us(50) == 50_000
    assert binding.quota_us(150) == 150_000
    assert binding.quota_us(None) is None and binding.quota_us(0) is None
    assert binding.quota_us(0.1) == 1000  # kernel minimum 1 ms
    assert binding.shares_from_weight(100) == 1024
    assert binding.shares_from_weight(200) == 2048
    assert binding.v2_weight(100000) == 10000


def test_task_cgroup_name_unique_and_bounded():
    a = binding.task_cgroup_name("run1", "node1", "t1", 1)
    b = binding.task_cgroup_name("run1", "node1", "t1", 2)
    assert a != b and "/" not in a
    long = binding.task_cgroup_name("r" * 128, "n" * 128, "t" * 128, 3)
    assert len(long) <= binding.MAX_NAME
    assert long != binding.task_cgroup_name("r" * 128, "n" * 128, "t" * 127 + "u", 3)


def test_parse_cpuset_checks_allowed_cpus():
    assert binding.parse_cpuset("0-1", allowed={0, 1}) == [0, 1]
    with pytest.raises(Unsupported, match="does not offer"):
        binding.parse_cpuset("0,5", allowed={0, 1})
    with pytest.raises(UsageError, match="bad cpuset"):
        binding.parse_cpuset("zero", allowed={0, 1})


def test_cpu_list_round_trip():
    assert procfs.parse_cpu_list("0-2,5, 7-8") == [0, 1, 2, 5, 7, 8]
    assert procfs.format_cpu_list([8, 7, 5, 2, 1, 0]) == "0-2,5,7-8"
    with pytest.raises(ValueError):
        procfs.parse_cpu_list("3-1")


def test_parse_stat_handles_spaces_and_parens_in_comm():
    text = ("4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
            "17 5 3 2 20 0 4 0 123456 1000000 250 18446744073709551615")
    st = procfs.parse_stat(4242, text)
    assert st.comm == "my (odd) prog"
    assert (st.utime, st.stime, st.cutime, st.cstime) == (17, 5, 3, 2)
    assert st.cpu_ticks == 27
    assert st.num_threads == 4 and st.starttime == 123456 and st.rss_pages == 250 and st.ppid == 1


def test_cpu_model_and_mhz_prefers_nominal():
    info = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\ncpu MHz\t\t: 1200.000\n"
    assert nodeinfo.cpu_model_and_mhz(info, "3300000") == ("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", 2400.0)
    assert nodeinfo.cpu_model_and_mhz("model name : AMD EPYC\ncpu MHz : 2596.124\n", "") == ("AMD EPYC", 2596.1)
    assert nodeinfo.cpu_model_and_mhz("model name : X\n", "3300000") == ("X", 3300.0)


def test_timesync_plan_never_steps_unless_asked():
    have = {"ntpdate", "chronyc"}

    def which(name):
        return f"/usr/sbin/{name}" if name in have else None

    assert timesync.plan("p.example", False, which) == ["ntpdate", "-q", "p.example"]
    assert timesync.plan("p.example", True, which) == ["ntpdate", "-b", "p.example"]
    assert timesync.plan("p.example", False, lambda n: None) is None


def test_timesync_disabled_logs_and_never_fails(tmp_path):
    log = tmp_path / "timesync.log"
    assert timesync.sync(log, enabled=False) == "skipped"
    assert "TIME_SYNC=0" in log.read_text()


def test_video_plan_is_deterministic_with_noise_thirds(tmp_path):
    a = videos.plan_clips(9, 7, tmp_path)
    b = videos.plan_clips(9, 7, tmp_path)
    c = videos.plan_clips(9, 8, tmp_path)
    assert a == b and a != c
    assert [s.noise for s in a].count("none") == 3 and [s.noise for s in a].count("medium") == 3
    assert len({s.pattern for s in a}) >= 2
    graph = videos.source_filter(a[1], 320, 240, 30, 1.0)
    assert "noise=alls=8" in graph and f"all_seed={a[1].noise_seed}" in graph
    assert "noise" not in videos.source_filter(a[0], 320, 240, 30, 1.0)


def test_video_argv_has_contract_settings(tmp_path):
    spec = videos.plan_clips(1, 1, tmp_path)[0]
    argv = videos.ffmpeg_argv(spec, 1920, 1080, 30, 10, "8M", 90, "medium")
    s = " ".join(argv)
    assert "-c:v libx264" in s and "-pix_fmt yuv420p" in s and "-b:v 8M" in s and "-g 90" in s
    assert "-bufsize 16M" in s and argv[-1] == str(spec.path)


@pytest.mark.parametrize("bad", ["1920", "1921x1080", "0x10", "axb"])
def test_video_bad_resolution(bad):
    with pytest.raises(UsageError, match="bad resolution"):
        videos.parse_resolution(bad)


def test_collector_config_from_env(tmp_path):
    from tracekit.node.collector import CollectorConfig

    env = {"RUN_ID": "r1", "NODE_ID": "n1", "PROC_INTERVAL_MS": "500"}
    cfg = CollectorConfig.from_env(env)
    assert cfg.interval_ms == 500 and cfg.match is not None and not cfg.whitelist_only
    cfg = CollectorConfig.from_env(dict(env, PROC_PID_DIR=str(tmp_path)))
    assert cfg.whitelist_only and cfg.match is None and cfg.pid_dir == Path(tmp_path)
    with pytest.raises(UsageError, match="PROC_INTERVAL_MS"):
        CollectorConfig.from_env(dict(env, PROC_INTERVAL_MS="fast"))
    with pytest.raises(UsageError, match="PROC_MATCH"):
        CollectorConfig.from_env(dict(env, PROC_MATCH="("))


def test_cgroup_file_formats_v1_and_v2(tmp_path):
    """The values written and parsed per cgroup version (a plain folder stands in for the hierarchy)."""
    from tracekit.node import cgroupfs

    for ctrl in ("cpu", "cpuacct", "memory"):
        (tmp_path / "v1" / ctrl).mkdir(parents=True)
    cg = cgroupfs.create_v1("t.a1", binding.shares_from_weight(200), binding.quota_us(150), root=tmp_path / "v1")
    assert (Path(cg["cpu"]) / "cpu.shares").read_text() == "2048"
    assert (Path(cg["cpu"]) / "cpu.cfs_quota_us").read_text() == "150000"
    (Path(cg["cpuacct"]) / "cpuacct.usage").write_text("123456789\n")
    (Path(cg["memory"]) / "memory.max_usage_in_bytes").write_text("2048000\n")
    assert cgroupfs.cpu_usage_us(cg) == 123456 and cgroupfs.memory_peak_kb(cg) == 2000
    cgroupfs.set_quota(cg, None)
    assert (Path(cg["cpu"]) / "cpu.cfs_quota_us").read_text() == "-1"

    (tmp_path / "v2").mkdir()
    cg2 = cgroupfs.create_v2("t.a1", binding.v2_weight(200), binding.quota_us(50), root=tmp_path / "v2")
    assert cg2["cpu"] == cg2["memory"] and (Path(cg2["cpu"]) / "cpu.weight").read_text() == "200"
    assert (Path(cg2["cpu"]) / "cpu.max").read_text() == "50000 100000"
    assert (tmp_path / "v2" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    (Path(cg2["cpu"]) / "cpu.stat").write_text("usage_usec 4242\nuser_usec 4000\n")
    (Path(cg2["cpu"]) / "memory.current").write_text("4096\n")
    assert cgroupfs.cpu_usage_us(cg2) == 4242 and cgroupfs.memory_kb(cg2) == 4
    cgroupfs.set_quota(cg2, None)
    assert (Path(cg2["cpu"]) / "cpu.max").read_text() == "max 100000"
