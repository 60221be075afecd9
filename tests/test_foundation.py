"""Foundation: payload validation, key prefixes, Redis URL/password handling (real redis-server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.control.task import InvalidTask, build_command, parse_task
from tracekit.core import errors
from tracekit.core.cli import exit_code
from tracekit.core.errors import BadInput, BadTask, RedisUnavailable
from tracekit.core.keys import Keys
from tracekit.core.redis_conn import connect, redact, strip_password


def payload(**kw) -> str:
    import json

    d = {"trace_id": "r-1", "profile": "fast1080p", "ts_enqueue": 1, "input": "a.mp4", "output": "o/r-1.mp4"}
    d.update(kw)
    return json.dumps({k: v for k, v in d.items() if v is not None})


def test_valid_payload_builds_confined_argv(tmp_path):
    t = parse_task(payload())
    assert t.cpu_units == 2 and t.params["threads"] == 2 and t.attempt == 1
    cmd = build_command(t, tmp_path / "in", tmp_path / "out")
    assert cmd.argv[0].endswith("ffmpeg") and "-nostdin" in cmd.argv
    assert cmd.output_path == (tmp_path / "out/o/r-1.mp4").resolve()
    assert cmd.tmp_output_path.parent == cmd.output_path.parent and cmd.tmp_output_path.name.startswith(".")
    assert str(cmd.tmp_output_path) == cmd.argv[-1]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (payload(input="../../etc/passwd"), "escapes"),
        (payload(output="-f"), "'-'"),
        (payload(params={"codec": "x; rm -rf /"}), "codec"),
        (payload(params={"scale": "1920x1080;id"}), "scale"),
        (payload(params={"extra": "-vf"}), "unknown params"),
        (payload(profile="nope"), "unknown profile"),
        (payload(trace_id="../x"), "trace_id"),
        (payload(cpu_units=0), "cpu_units"),
        ('{"trace_id": "x"', "not valid JSON"),
        ("[1,2]", "JSON object"),
        ("x" * 70000, "exceeds"),
    ],
)
def test_bad_payloads_are_rejected_with_reason(tmp_path, raw, reason):
    with pytest.raises(InvalidTask, match=None) as exc:
        build_command(parse_task(raw), tmp_path / "in", tmp_path / "out")
    assert reason in str(exc.value)


@pytest.mark.parametrize("exc, code", [
    (errors.UsageError("x"), 2), (errors.BadInput("x", path="p"), 2), (errors.BadTask("x", trace_id="t"), 2),
    (errors.BadRunFolder("x"), 2), (errors.RedisUnavailable("x"), 2), (errors.DependencyMissing("x", name="n"), 2),
    (errors.Unsupported("x"), 2), (errors.Conflict("x"), 2), (errors.StepFailed("x"), 2),
    (errors.TracekitError("x"), 2),
    (errors.RunFailed("x"), 1),
])
def test_exit_code_per_error_class(exc, code):
    assert exit_code(exc) == code


def test_invalid_task_is_a_bad_task_exiting_2():
    with pytest.raises(BadTask, match="unknown profile") as exc:
        parse_task(payload(profile="nope"))
    assert isinstance(exc.value, InvalidTask) and exc.value.trace_id == "r-1" and exit_code(exc.value) == 2


def test_symlink_escape_is_rejected(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/link").symlink_to("/etc")
    with pytest.raises(InvalidTask, match="escapes"):
        build_command(parse_task(payload(input="link/passwd")), tmp_path / "in", tmp_path / "out")


def test_key_prefix_applies_to_every_key():
    k = Keys("runA:")
    assert k.pending == "runA:q:pending" and k.cap("n1") == "runA:cap:n1" and k.slots == "runA:slots:available"
    assert Keys().queue("n1") == "q:n1" and Keys().running("n1") == "running:n1"


def test_password_is_redacted():
    url = "redis://10.0.0.5:6379/0?password=Secret123"
    assert "Secret123" not in redact(url) and "Secret123" not in strip_password(url)
    assert "Secret123" not in redact("redis://:Secret123@h:1/0")


def test_connect_checks_password(redis_server, monkeypatch):
    monkeypatch.delenv("TRACEKIT_REDIS_PASSWORD", raising=False)
    with pytest.raises(RedisUnavailable, match="password") as exc:
        connect(redis_server.url)
    assert exit_code(exc.value) == 2
    with pytest.raises(RedisUnavailable, match="rejected the password"):
        connect(f"redis://:wrong@{redis_server.host}:{redis_server.port}/0")
    monkeypatch.setenv("TRACEKIT_REDIS_PASSWORD", redis_server.password)
    assert connect(redis_server.url).ping()


def test_password_file(redis_server, tmp_path, monkeypatch):
    monkeypatch.delenv("TRACEKIT_REDIS_PASSWORD", raising=False)
    f = tmp_path / "pw"
    f.write_text(redis_server.password + "\n")
    assert connect(redis_server.url, str(f)).ping()


def test_unreachable_redis_is_one_clear_error():
    from tracekit.cluster.redis_server import free_port

    with pytest.raises(RedisUnavailable, match="cannot reach Redis") as exc:
        connect(f"redis://127.0.0.1:{free_port()}/0")
    assert exit_code(exc.value) == 2 and "\n" not in str(exc.value)


def test_profiles_user_file(tmp_path, monkeypatch):
    from tracekit.control import profiles

    f = tmp_path / "p.json"
    f.write_text('{"tiny": {"app": "ffmpeg-synth", "cpu_units": 1, "seconds": 0.2, "scale": "160x120"}}')
    monkeypatch.setenv("TRACEKIT_PROFILES", str(f))
    assert profiles.get_profile("tiny")["seconds"] == 0.2
    assert "fast1080p" in profiles.load_profiles()
    f2 = tmp_path / "bad.json"
    f2.write_text('{"bad": {"cpu_units": "two"}}')
    monkeypatch.setenv("TRACEKIT_PROFILES", str(f2))
    with pytest.raises(BadInput, match="cpu_units"):
        profiles.load_profiles()
    assert Path(profiles.BUILTIN_FILE).exists()
