"""Redis URL and password resolution, and a connection that fails with one clear line.

Order: ``--redis URL`` flag, else ``TRACEKIT_REDIS_URL`` (or ``REDIS_URL``), else the
local default. The password may sit in the URL (``redis://:PASS@host`` or ``?password=PASS``, as the
original toolkit did), in ``TRACEKIT_REDIS_PASSWORD``, or in a file named by
``TRACEKIT_REDIS_PASSWORD_FILE`` / ``--redis-password-file``. It is never printed: use
:func:`redact` for anything shown to a user or written to a log.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import redis

from tracekit.core.errors import BadInput, RedisUnavailable, UsageError
from tracekit.core.keys import PREFIX_ENV, Keys

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = ("TRACEKIT_REDIS_URL", "REDIS_URL")
PASSWORD_ENV = "TRACEKIT_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "TRACEKIT_REDIS_PASSWORD_FILE"


def add_redis_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis``, ``--redis-password-file`` and ``--key-prefix`` to a script's parser."""
    parser.add_argument(
        "--redis",
        default=None,
        help=f"Redis URL (default: ${URL_ENV[0]} or {DEFAULT_URL}); redis:// or rediss:// (TLS). "
        f"Prefer ${PASSWORD_ENV} or a password file over a password in the URL: "
        "command lines are visible in ps.",
    )
    parser.add_argument(
        "--redis-password-file",
        default=os.environ.get(PASSWORD_FILE_ENV),
        help=f"file holding the Redis password (default: ${PASSWORD_FILE_ENV})",
    )
    parser.add_argument(
        "--key-prefix",
        default=os.environ.get(PREFIX_ENV, ""),
        help=f"prefix for every Redis key, so runs can share one Redis (default: ${PREFIX_ENV} or none)",
    )


def resolve_url(flag: str | None) -> str:
    """The Redis URL from the flag, the environment, or the default."""
    if flag:
        return flag
    for name in URL_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_URL


_HOST = re.compile(r"\[[0-9A-Fa-f:.]*\](?::[0-9]*)?|[A-Za-z0-9._~%\-]*(?::[0-9]*)?")


def _split(url: str) -> tuple[str, str | None, str, str]:
    """``(scheme, userinfo or None, host[:port] + path, query)`` of a Redis URL, for any password characters.

    The user part ends at the first ``@`` that is followed by a host (and optional port) and then ``/``, ``?`` or
    the end, so a password may hold ``/ # ? @ :`` unescaped. The query is everything after the first ``?`` of the
    rest (a ``#`` there belongs to a value: Redis URLs have no fragment). An ``@`` inside a query value must be
    written ``%40``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, "", ""
    user = None
    start = 0
    while True:
        i = rest.find("@", start)
        if i < 0:
            break
        tail = rest[i + 1:]
        m = _HOST.match(tail)
        end = m.end() if m else 0
        in_query = re.search(r"[?&]password=", rest[:i]) is not None  # an '@' inside ?password=...
        if (end == len(tail) or tail[end] in "/?") and (end > 0 or scheme == "unix") and not in_query:
            user, rest = rest[:i], tail
            break
        start = i + 1
    base, _, query = rest.partition("?")
    return scheme, user, base, query


def _url_password(url: str) -> str | None:
    _, user, _, query = _split(url)
    if user is not None and ":" in user:
        pw = user.partition(":")[2]
        if pw:
            return pw
    return dict(parse_qsl(query)).get("password")


def resolve_password(url: str, password_file: str | None = None) -> str | None:
    """The password: in the URL, else the environment, else the password file."""
    pw = _url_password(url)
    if pw:
        return pw
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    path = password_file or os.environ.get(PASSWORD_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise BadInput(f"cannot read Redis password file {path}: {exc.strerror}", path=path) from None
    return None


def strip_password(url: str) -> str:
    """The URL without any password (user part or ``password=`` query); never raises."""
    scheme, user, base, query = _split(url)
    name = (user or "").partition(":")[0]
    q = urlencode([(k, v) for k, v in parse_qsl(query) if k != "password"])
    return f"{scheme}://{name + '@' if name else ''}{base}{'?' + q if q else ''}" if "://" in url else url


def redact(url: str) -> str:
    """The URL as it may be shown or logged: the password replaced by ``***``; never raises."""
    try:
        scheme, user, base, query = _split(url)
        if user is None and "@" in base:  # not a URL this module understands: show no user part at all
            return f"{scheme}://***@{base.rpartition('@')[2]}"
        if _url_password(url) is None:
            return strip_password(url)
        name = (user or "").partition(":")[0]
        q = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(query)], safe="*")
        return f"{scheme}://{name}{':***@' if user is not None and ':' in user else ('@' if name else '')}{base}" + (
            f"?{q}" if q else "")
    except Exception:  # never let a URL's text escape through an error message
        return "<Redis URL>"


MIN_SERVER_VERSION = (6, 2, 0)  # BLMOVE (the worker's atomic take) exists since Redis 6.2


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> (7, 0, 15); the leading numeric parts only (``"6.2.0-rc1"`` -> (6, 2, 0))."""
    parts = []
    for piece in str(text).strip().split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def check_server_version(version: str | None, where: str = "Redis") -> None:
    """Refuse a server older than :data:`MIN_SERVER_VERSION` with one line (:class:`RedisUnavailable`).

    ``version`` None (INFO disabled or renamed on the server) is let through: the first BLMOVE would then say it.
    """
    if version is None:
        return
    have = parse_version(version)
    if not have or have < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION[:2]))
        raise RedisUnavailable(f"{where} runs Redis {version}; Tracekit needs Redis >= {need} (BLMOVE): "
                               "upgrade redis-server (docs/migrating.md)")


def server_version(client: redis.Redis) -> str | None:
    """The server's ``redis_version`` from INFO server, or None when INFO is not allowed."""
    try:
        info = client.info("server")
    except redis.ResponseError:
        return None
    v = info.get("redis_version")
    return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else None)


def connect(
    url: str | None = None,
    password_file: str | None = None,
    *,
    decode_responses: bool = True,
    socket_timeout: float | None = 10.0,
) -> redis.Redis:
    """A checked connection (PING answered), or :class:`RedisUnavailable` (exit code 2) with one line."""
    url = resolve_url(url)
    if url.partition("://")[0] not in ("redis", "rediss", "unix"):
        raise UsageError(f"bad Redis URL {redact(url)!r}: expected redis://, rediss:// or unix://")
    password = resolve_password(url, password_file)
    try:
        client = redis.Redis.from_url(
            strip_password(url),
            password=password,
            decode_responses=decode_responses,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            health_check_interval=15,
        )
        client.ping()
        check_server_version(server_version(client), f"the server at {redact(url)}")
    except redis.AuthenticationError:
        raise RedisUnavailable(f"Redis at {redact(url)} rejected the password") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            msg = "requires a password" if "NOAUTH" in str(exc) else "rejected the password"
            raise RedisUnavailable(f"Redis at {redact(url)} {msg}") from None
        raise RedisUnavailable(f"Redis at {redact(url)} answered: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)}: {exc}") from None
    except ValueError:  # redis-py's own URL parsing (a bad port, db, option): its message may quote the URL
        raise UsageError(f"bad Redis URL {redact(url)}") from None
    return client


def connect_from_args(args: argparse.Namespace, **kwargs) -> tuple[redis.Redis, Keys]:
    """Connect with the flags added by :func:`add_redis_args`; warn if the password is in argv."""
    if args.redis and _url_password(args.redis) and sys.stderr.isatty():
        print(
            "warning: a password in --redis is visible in ps; "
            f"prefer {PASSWORD_ENV} or {PASSWORD_FILE_ENV}",
            file=sys.stderr,
        )
    return connect(args.redis, args.redis_password_file, **kwargs), Keys(args.key_prefix)
