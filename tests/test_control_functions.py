"""The steps as Redis functions (FCALL, Redis >= 7) with the EVALSHA scripts as fallback, on a real redis-server."""

from __future__ import annotations

import json
import secrets

import pytest
import redis

from tracekit.control.lua import Scripts, library, weigher_lua
from tracekit.core.keys import Keys

K = Keys("fn:")


def calls(client, cmd: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0)


def seven(client) -> None:
    if int(client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("Redis functions need Redis >= 7 (this server is older: the EVALSHA path is the only one)")


def one_placement(client, sc: Scripts) -> list:
    """A node of 2 units, one task placed on it: the step's reply."""
    sc.register(args=["n1", "i1", 2, 0, 60_000, "0"])
    sc.reindex(args=["", "min"])
    client.rpush(K.pending, json.dumps({"trace_id": "t1", "profile": "p", "cpu_units": 1, "ts_enqueue": 1}))
    return sc.place(args=["", "min", 10, "0"])


def test_steps_run_as_functions_and_a_flushed_library_is_loaded_again(redis_client):
    seven(redis_client)
    sc = Scripts(redis_client, K)
    f0, e0 = calls(redis_client, "fcall"), calls(redis_client, "evalsha")
    assert one_placement(redis_client, sc) == [1, "empty"]
    assert calls(redis_client, "fcall") - f0 == 3 and calls(redis_client, "evalsha") == e0
    code, names = library(K.prefix, weigher_lua())
    assert names["place"] in code and names["place"].rsplit("_", 1)[0] in str(redis_client.function_list())
    redis_client.function_flush()  # what a Redis restarted empty has: the next call loads the library again
    raw = redis_client.lmove(K.queue("n1"), K.running("n1"), "LEFT", "RIGHT")
    assert sc.complete(args=["n1", raw, "t1", 1, "done", "{}"]) == "ok"
    assert redis_client.get(K.cap("n1")) == "2" and redis_client.get(K.run_count("n1")) == "0"
    assert calls(redis_client, "evalsha") == e0


@pytest.fixture
def no_function_user(redis_server, redis_client):
    """A client whose ACL denies FUNCTION (as Redis 6.2 lacks it): the steps must run by EVALSHA."""
    seven(redis_client)
    token = secrets.token_urlsafe(16)
    redis_client.acl_setuser("tk-nofn", enabled=True, passwords=[f"+{token}"], commands=["+@all", "-function"],
                             keys=["*"], channels=["*"])
    user = redis.Redis(host=redis_server.host, port=redis_server.port, username="tk-nofn", password=token,
                       decode_responses=True)
    try:
        yield user
    finally:
        user.close()
        redis_client.acl_deluser("tk-nofn")


def test_a_user_without_function_runs_the_scripts(no_function_user, redis_client):
    """An ACL that denies FUNCTION: the same steps run by EVALSHA, with the same results."""
    user = no_function_user
    sc = Scripts(user, K)
    f0, e0 = calls(redis_client, "fcall"), calls(redis_client, "evalsha")
    assert one_placement(user, sc) == [1, "empty"]
    assert calls(redis_client, "fcall") == f0 and calls(redis_client, "evalsha") - e0 >= 3


def test_a_function_call_reads_the_active_weighers_afresh(redis_client):
    """A function keeps its library's locals between calls: the list of active weigher indexes (read once per run)
    is reset at every call, as a fresh script run has it; a stale one would recreate a dropped index here."""
    seven(redis_client)
    sc = Scripts(redis_client, K)
    sc.register(args=["n1", "i1", 2, 0, 60_000, "0"])
    sc.reindex(args=["", "min"])
    redis_client.rpush(K.pending, json.dumps({"trace_id": "t1", "profile": "p", "cpu_units": 1, "ts_enqueue": 1}))
    assert sc.place(args=["instances", "min", 10, "0"]) == [1, "empty"]
    assert redis_client.exists(K.index("w:instances:min"))
    redis_client.delete(K.index("active"), K.index("w:instances:min"))  # no weigher index kept any more
    raw = redis_client.lmove(K.queue("n1"), K.running("n1"), "LEFT", "RIGHT")
    assert sc.complete(args=["n1", raw, "t1", 1, "done", "{}"]) == "ok"
    assert not redis_client.exists(K.index("w:instances:min"))


def test_a_step_sent_ahead_of_its_reply_reloads_a_flushed_library(redis_client):
    """``Step.begin`` (the scheduler's PLACE, sent before it checks the next head): the reply comes from ``finish``;
    a library Redis lost meanwhile is loaded again and the step runs once."""
    seven(redis_client)
    sc = Scripts(redis_client, K)
    assert one_placement(redis_client, sc) == [1, "empty"]
    redis_client.rpush(K.pending, json.dumps({"trace_id": "t2", "profile": "p", "cpu_units": 1, "ts_enqueue": 1}))
    assert sc.place.begin(["", "min", 10, "0"])() == [1, "empty"]
    redis_client.function_flush()
    redis_client.rpush(K.pending, json.dumps({"trace_id": "t3", "profile": "p", "cpu_units": 1, "ts_enqueue": 1}))
    f0 = calls(redis_client, "fcall")
    finish = sc.place.begin(["", "min", 10, "0"])
    assert finish() == [0, "blocked"] and calls(redis_client, "fcall") - f0 == 2  # the failed call, then the step
    assert redis_client.llen(K.queue("n1")) == 2 and redis_client.llen(K.pending) == 1


def test_the_scheduler_loop_places_through_the_scripts_where_function_is_denied(no_function_user, redis_client,
                                                                                 run_env):
    """The central loop (head read in a pipeline with the lock step, PLACE sent ahead) on the EVALSHA path."""
    import threading
    import time

    from tracekit.control import central

    user = no_function_user
    stop, loop = threading.Event(), None
    try:
        sc = Scripts(user, K)
        sc.register(args=["n1", "i1", 2, 0, 60_000, "0"])
        for i in range(4):
            user.rpush(K.pending, json.dumps({"trace_id": f"a{i}", "profile": "p", "cpu_units": 1, "ts_enqueue": 1}))
        f0 = calls(redis_client, "fcall")
        loop = threading.Thread(target=central.run, args=(user, K, central.SchedulerConfig(
            run_id=run_env["RUN_ID"], reap_interval=0.2), stop))
        loop.start()
        deadline = time.monotonic() + 10
        while user.llen(K.queue("n1")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert user.llen(K.queue("n1")) == 2 and user.llen(K.pending) == 2
        raw = user.lmove(K.queue("n1"), K.running("n1"), "LEFT", "RIGHT")
        assert sc.complete(args=["n1", raw, json.loads(raw)["trace_id"], 1, "done", "{}"]) == "ok"
        while user.llen(K.pending) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert user.llen(K.pending) == 1 and user.llen(K.queue("n1")) == 2  # the freed unit taken by the next
        assert calls(redis_client, "fcall") == f0
    finally:
        stop.set()
        if loop is not None:
            loop.join(10)
