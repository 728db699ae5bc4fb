"""``meshctl.demo.load``: ab's measurement against a real loopback server, and its limits."""

from __future__ import annotations

import http.server
import threading

import pytest

from meshctl.demo.load import LoadResult, run_load
from meshctl.errors import MeshctlError


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        status = 500 if self.path.endswith("/fail") else 200
        body = b"x" * 10
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if self.path.endswith("/close"):
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path", ["/ok", "/close"])  # kept-alive connections, and one connection per request
def test_counts_every_request_and_reports_like_ab(server, path):
    seen = []
    result = run_load(server + path, total=50, concurrency=4, on_progress=lambda done, total: seen.append(done))
    assert result.codes == {"200": 50} and result.failed == 0 and result.non_2xx == 0
    assert result.complete == 50 and result.body_bytes == 500 and seen[-1] == 50 and sorted(seen) == seen
    text = result.render()
    assert "Complete requests:      50" in text and "Failed requests:        0" in text
    assert "Non-2xx" not in text and " 100%" in text


def test_non_2xx_and_refused_connections_are_told_apart(server):
    result = run_load(server + "/fail", total=10, concurrency=2)
    assert result.codes == {"500": 10} and result.non_2xx == 10 and result.failed == 0
    assert "Non-2xx responses:      10" in result.render()
    # A port nothing listens on: every request fails without a response (ab's "Failed requests").
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    refused = run_load(f"http://127.0.0.1:{port}/", total=3)
    assert refused.failed == 3 and refused.complete == 0 and refused.success_rate == 0


def test_rate_limit_paces_the_requests(server):
    result = run_load(server + "/ok", total=10, concurrency=2, rps=50)
    assert result.seconds >= 9 / 50 and result.codes == {"200": 10}


def test_percentiles_are_nearest_rank():
    r = LoadResult("http://x/", 1, 1.0, {"200": 4}, (4.0, 1.0, 3.0, 2.0), 0, "")
    assert [r.percentile(p) for p in (50, 75, 100)] == [2.0, 3.0, 4.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"total": 0}, "-n must be at least 1"),
    ({"total": 5, "concurrency": 0}, "-c must be at least 1"),
    ({"total": 5, "concurrency": 6}, "cannot use concurrency 6 for only 5 requests"),
    ({"total": 5, "rps": -1}, "--rps must be positive"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    with pytest.raises(MeshctlError, match=message):
        run_load("http://127.0.0.1:1/", **kwargs)
    with pytest.raises(MeshctlError, match="expected an http://HOST"):
        run_load("https://example.org/", total=1)
