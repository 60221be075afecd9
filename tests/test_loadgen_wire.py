"""The load generator's wire time stamps (control/loadgen.py ``WireSocket``) on real loopback sockets, a real
closed-loop run against a small local HTTP server, and the demo service's bounded ``work_us`` parameter."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tracekit.control.loadgen import WIRE, LoadSpec, run_load, wire_socket
from tracekit.control.loadplan import MixEntry
from tracekit.node.demo_service import MAX_WORK_US, work_us_arg


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        ws = wire_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", None))
        ws.connect(lsock.getsockname())
        peer, _ = lsock.accept()
    return ws, peer


def test_wire_socket_stamps_the_request_that_sent():
    ws, peer = _pair()
    with ws, peer:
        rec = [None, None, None]
        token = WIRE.set(rec)
        try:
            before = time.perf_counter_ns()
            ws.send(b"GET / HTTP/1.1\r\n\r\n")
            ws.send(b"more")  # a later send of the same request keeps the first time
        finally:
            WIRE.reset(token)
        assert rec[0] is not None and before <= rec[0] and rec[1] is None
        peer.sendall(b"abc")
        time.sleep(0.01)
        assert ws.recv(1) == b"a"
        ws.recv(10)
        assert rec[0] < rec[1] < rec[2]  # first and last response bytes, stamped without the context var
        sent, first = rec[0], rec[1]
        ws.send(b"x")  # no request in this context: the connection stops stamping into the old one
        peer.sendall(b"z")
        assert ws.recv(1) == b"z" and (rec[0], rec[1]) == (sent, first)


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(0.02)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args):
        pass


def test_closed_loop_times_are_the_wire_times():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        spec = LoadSpec(url=f"http://127.0.0.1:{srv.server_address[1]}", trace_id="t", mix=[MixEntry("GET", "/p")],
                        mode="closed", concurrency=1, count=5)
        lines, meta = run_load(spec)
    finally:
        srv.shutdown()
        srv.server_close()
    assert meta["errors"] == 0 and [ln["status"] for ln in lines] == [200] * 5
    for ln in lines:
        assert ln["ts_sched"] == ln["ts_send"] <= ln["ts_first_byte"] <= ln["ts_end"]
        assert 20 <= ln["ts_end"] - ln["ts_send"] < 1000  # the server's 20 ms are inside
    for a, b in zip(lines, lines[1:]):
        assert a["ts_end"] <= b["ts_send"]  # back to back on one connection


def test_work_us_is_bounded():
    assert work_us_arg({}) == 0
    assert work_us_arg({"work_us": "1000"}) == 1000
    for bad in ("-1", str(MAX_WORK_US + 1), "x"):
        with pytest.raises(ValueError):
            work_us_arg({"work_us": bad})
