"""HTTP/2 through a real meshctl-proxy process: httpx (http2), raw h2 clients, gRPC."""

from __future__ import annotations

import hashlib
import signal
import socket
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest

from .apps import H2Server
from .conftest import metric_sum


@pytest.fixture(scope="module")
def h2app(loop_thread):
    a = loop_thread.run(H2Server().start())
    yield a
    loop_thread.run(a.stop())


def client(**kw) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=10, **kw)


def auth(app) -> str:
    return f"127.0.0.1:{app.port}"


def test_requests_multiplex_over_one_upstream_connection(start_proxy, h2app):
    p = start_proxy()
    before = h2app.connections
    with client() as c:
        for i in range(5):
            r = c.post(p.url("outbound", f"/echo?i={i}"), content=b"hello %d" % i, headers={"Host": auth(h2app)})
            assert r.http_version == "HTTP/2"
            assert r.headers["x-body-sha256"] == hashlib.sha256(b"hello %d" % i).hexdigest()
            assert r.headers["x-path"] == f"/echo?i={i}"
    assert h2app.connections - before == 1
    m = p.metrics()
    assert metric_sum(m, "request_total", direction="outbound", authority=auth(h2app)) == 5
    assert metric_sum(m, "response_total", status_code="200", classification="success") == 5


def test_large_bodies_respect_flow_control_both_ways(proxy, h2app):
    body = bytes(range(256)) * 8192  # 2 MiB up, several windows' worth
    with client() as c:
        r = c.post(proxy.url("outbound", "/echo"), content=body, headers={"Host": auth(h2app)})
        assert r.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
        assert r.content == body
        r = c.get(proxy.url("outbound", "/big?size=3000000"), headers={"Host": auth(h2app)})
        assert len(r.content) == 3000000 - 3000000 % 256


def test_trailers_pass_through(proxy, h2app):
    raw = RawH2(proxy.outbound)
    sid = raw.request([(b":method", b"POST"), (b":path", b"/echo"), (b":authority", auth(h2app).encode()),
                       (b":scheme", b"http"), (b"want-trailers", b"1"), (b"te", b"trailers")], body=b"x")
    events = raw.until_stream_done(sid)
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers and dict(trailers[0].headers)[b"grpc-status"] == b"0"
    assert dict(trailers[0].headers)[b"x-trailer"] == b"yes"
    raw.close()


def test_upstream_reset_is_propagated_with_its_code(proxy, h2app):
    raw = RawH2(proxy.outbound)
    sid = raw.request([(b":method", b"GET"), (b":path", b"/reset?code=11"), (b":authority", auth(h2app).encode()),
                       (b":scheme", b"http")])
    events = raw.until_stream_done(sid)
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM  # 11, carried through
    raw.close()


def test_client_reset_cancels_the_upstream_stream(proxy, h2app):
    raw = RawH2(proxy.outbound)
    sid = raw.request([(b":method", b"GET"), (b":path", b"/slow?s=2"), (b":authority", auth(h2app).encode()),
                       (b":scheme", b"http")])
    time.sleep(0.3)
    before = len(h2app.resets)
    raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    raw.flush()
    deadline = time.monotonic() + 3
    while len(h2app.resets) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h2app.resets[-1][1] == h2.errors.ErrorCodes.CANCEL
    raw.close()


def test_streamed_response_arrives_incrementally(proxy, h2app):
    with client() as c:
        start = time.monotonic()
        with c.stream("GET", proxy.url("outbound", "/stream?n=3&gap=0.4"), headers={"Host": auth(h2app)}) as r:
            first = None
            data = b""
            for piece in r.iter_raw():
                if first is None and piece:
                    first = time.monotonic() - start
                data += piece
        assert data == b"part0;part1;part2;"
        assert first < 0.6 < time.monotonic() - start


def test_unreachable_upstream_is_502_with_reason(proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with client() as c:
        r = c.get(proxy.url("outbound", "/"), headers={"Host": f"127.0.0.1:{port}"})
    assert r.status_code == 502 and "failed" in r.headers["meshctl-proxy-error"]


class RawH2:
    """A bare h2 client over a socket, to send what polite clients never would."""

    def __init__(self, addr, *, validate: bool = True) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        # validate=False: h2 sends whatever header block it is given (to send malformed ones).
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, headers, body: bytes = b"") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def events(self, timeout: float = 5.0):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not data:
            return None
        evs = self.conn.receive_data(data)
        self.flush()
        return evs

    def until_stream_done(self, sid: int, timeout: float = 5.0) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = self.events()
            if evs is None:
                break
            out += evs
            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid
                   for e in evs):
                break
        return out

    def until_goaway(self, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                evs = self.events()
            except h2.exceptions.ProtocolError:
                return None
            if evs is None:
                return None
            for e in evs:
                if isinstance(e, h2.events.ConnectionTerminated):
                    return e
        return None

    def close(self) -> None:
        self.sock.close()


def test_rapid_reset_gets_enhance_your_calm(proxy, h2app):
    raw = RawH2(proxy.outbound)
    for _ in range(400):
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/slow?s=1"),
                                    (b":authority", auth(h2app).encode()), (b":scheme", b"http")])
        raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    try:
        raw.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass
    goaway = raw.until_goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    raw.close()


def test_ping_flood_gets_enhance_your_calm(proxy):
    raw = RawH2(proxy.outbound)
    for i in range(300):
        raw.conn.ping(b"%08d" % i)
    raw.flush()
    goaway = raw.until_goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    raw.close()


def test_settings_flood_gets_enhance_your_calm(proxy):
    raw = RawH2(proxy.outbound)
    for i in range(300):
        raw.conn.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 10000 + i})
    raw.flush()
    goaway = raw.until_goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    raw.close()


def test_too_many_concurrent_streams_gets_enhance_your_calm(start_proxy, h2app):
    p = start_proxy(MESHCTL_PROXY_HTTP2_MAX_CONCURRENT_STREAMS="10")
    raw = RawH2(p.outbound)
    raw.events()  # the proxy's SETTINGS
    # Ignore the advertised limit on purpose.
    raw.conn.remote_settings.max_concurrent_streams = 1000
    raw.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = [1000]
    for _ in range(30):
        raw.request([(b":method", b"GET"), (b":path", b"/slow?s=2"), (b":authority", auth(h2app).encode()),
                     (b":scheme", b"http")])
    goaway = raw.until_goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    raw.close()


def test_grpc_unary_and_streaming_call_through_the_proxy(proxy, loop_thread):
    """A real gRPC client and server (grpcio, raw-bytes methods: no generated code needed)."""
    import grpc
    from concurrent import futures

    def unary(request: bytes, context) -> bytes:
        context.set_trailing_metadata((("x-served-by", "grpc-test"),))
        return b"hello " + request

    def server_stream(request: bytes, context):
        for i in range(3):
            yield b"%s-%d" % (request, i)

    def failing(request: bytes, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Fail": grpc.unary_unary_rpc_method_handler(failing),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = f"{proxy.outbound[0]}:{proxy.outbound[1]}"
        # The :authority names the real server: the proxy routes by it (ingress mode).
        with grpc.insecure_channel(target, options=[("grpc.default_authority", f"127.0.0.1:{port}")]) as channel:
            call = channel.unary_unary("/test.Echo/Unary")
            reply, outcome = call.with_call(b"world", timeout=10)
            assert reply == b"hello world"
            assert ("x-served-by", "grpc-test") in outcome.trailing_metadata()
            stream = channel.unary_stream("/test.Echo/Stream")
            assert list(stream(b"s", timeout=10)) == [b"s-0", b"s-1", b"s-2"]
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        m = proxy.metrics()
        auth = f"127.0.0.1:{port}"
        assert metric_sum(m, "response_total", authority=auth, classification="success") == 2
        assert metric_sum(m, "response_total", authority=auth, classification="failure") == 1  # grpc-status 5
    finally:
        server.stop(0)


def test_sigterm_sends_goaway_and_finishes_open_streams(start_proxy, h2app):
    from .h2wire import GoawayFilter

    p = start_proxy(MESHCTL_PROXY_SHUTDOWN_GRACE_PERIOD="10s")
    raw = RawH2(p.outbound)
    sid = raw.request([(b":method", b"GET"), (b":path", b"/slow?s=1"), (b":authority", auth(h2app).encode()),
                       (b":scheme", b"http")])
    time.sleep(0.3)
    p.proc.send_signal(signal.SIGTERM)
    # h2's client would stop at the GOAWAY; take it out of the stream and keep reading.
    goaway_filter = GoawayFilter()
    goaways, events = [], []
    raw.sock.settimeout(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = raw.sock.recv(65536)
        if not data:
            break
        data, found = goaway_filter.feed(data)
        goaways += found
        events += raw.conn.receive_data(data)
        if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events):
            break
    assert goaways and goaways[0] == (sid, 0)  # NO_ERROR, naming the stream it will still serve
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == b"slow"
    raw.close()
    assert p.proc.wait(10) == 0


MALFORMED_REQUESTS = {
    "upper-case name": [(b"X-Upper", b"1")],
    "connection-specific field": [(b"connection", b"keep-alive")],
    "te other than trailers": [(b"te", b"gzip")],
    "CR LF in a value": [(b"x-a", b"1\r\nx-injected: 1")],
    "value with surrounding space": [(b"x-a", b" 1")],
    "colon inside a name": [(b"x:a", b"1")],
    "pseudo-header after a regular field": [(b"x-a", b"1"), (b":protocol", b"x")],
    "host differs from :authority": [(b"host", b"elsewhere:80")],
}


def test_malformed_requests_are_refused_and_the_connection_goes_on(proxy, h2app):
    """RFC 9113 sections 8.1.1 and 8.2: each is a stream error (PROTOCOL_ERROR); nothing reaches the upstream."""
    raw = RawH2(proxy.outbound, validate=False)
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", auth(h2app).encode())]
    cases = {name: base + [(b":path", b"/echo?bad=%d" % i)] + extra
             for i, (name, extra) in enumerate(MALFORMED_REQUESTS.items())}
    cases["no :path"] = base + [(b"x-a", b"1")]
    cases["duplicate :method"] = [(b":method", b"GET")] + base + [(b":path", b"/echo?bad=dup")]
    cases["empty :path"] = base + [(b":path", b"")]
    cases["unknown pseudo-header"] = base + [(b":path", b"/echo?bad=pseudo"), (b":foo", b"1")]
    before = len(h2app.requests)
    for name, headers in cases.items():
        sid = raw.request(headers)
        events = raw.until_stream_done(sid)
        resets = [e for e in events if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]
        assert resets and resets[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR, name
        assert not [e for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid], name
    assert len(h2app.requests) == before  # none went upstream
    sid = raw.request(base + [(b":path", b"/echo?good=1"), (b"authorization", b"Bearer x"), (b"cookie", b"a=1")])
    events = raw.until_stream_done(sid)
    resp = next(e for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
    assert dict(resp.headers)[b":status"] == b"200"
    upstream_saw = h2app.requests[-1]
    assert upstream_saw[b"authorization"] == b"Bearer x" and upstream_saw[b"cookie"] == b"a=1"
    raw.close()


def test_malformed_upstream_responses_fail_only_their_stream(proxy, h2app):
    raw = RawH2(proxy.outbound)

    def get(path: bytes) -> list:
        return raw.until_stream_done(raw.request([(b":method", b"GET"), (b":path", path), (b":scheme", b"http"),
                                                  (b":authority", auth(h2app).encode())]))

    get(b"/echo")  # the pooled upstream connection exists
    before = h2app.connections
    for what in (b"upper", b"status"):
        events = get(b"/malformed?what=" + what)
        resp = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        headers = dict(resp.headers)
        assert headers[b":status"] == b"502", what
        assert b"malformed" in headers[b"meshctl-proxy-error"], what
    events = get(b"/malformed?what=trailers")  # the response had begun: the client's stream is reset
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    events = get(b"/echo")
    assert dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)[b":status"] == b"200"
    assert h2app.connections == before  # the upstream connection outlived the bad streams
    raw.close()


def test_debug_logging_does_not_write_header_values(start_proxy, h2app):
    """hpack logs every field it codes at DEBUG; the proxy silences it (credentials would reach the log)."""
    p = start_proxy(MESHCTL_PROXY_LOG_LEVEL="debug")
    with client() as c:
        r = c.get(p.url("outbound", "/echo"), headers={"Host": auth(h2app), "authorization": "Bearer sekrit-42"})
        assert r.status_code == 200
    p.proc.send_signal(signal.SIGTERM)
    p.proc.wait(10)
    err = p.proc.stderr.read()
    assert b"DEBUG" in err  # debug logging was on
    assert b"sekrit-42" not in err


def test_streams_an_upstream_goaway_refuses_are_sent_again_on_a_new_connection(proxy, h2app):
    """RFC 9113 section 6.8: streams above GOAWAY's last stream id were not processed, so they may be retried."""
    raw = RawH2(proxy.outbound)

    def get(path: bytes) -> int:
        return raw.request([(b":method", b"GET"), (b":path", path), (b":scheme", b"http"),
                            (b":authority", auth(h2app).encode())])

    raw.until_stream_done(get(b"/echo"))  # a pooled upstream connection exists
    before = h2app.connections
    first = get(b"/goaway?delay=0.4")
    time.sleep(0.1)
    second = get(b"/slow?s=1")  # in flight on the same upstream connection when the GOAWAY comes
    events, ended = [], set()
    deadline = time.monotonic() + 5
    while ended != {first, second} and time.monotonic() < deadline:
        evs = raw.events()
        if evs is None:
            break
        events += evs
        ended |= {e.stream_id for e in evs if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))}
    assert not [e for e in events if isinstance(e, h2.events.StreamReset)]
    data = {sid: b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
            for sid in (first, second)}
    assert data == {first: b"bye", second: b"slow"}
    assert h2app.connections == before + 1  # the refused stream went again, on a new connection
    raw.close()


def test_streams_reset_in_the_same_read_never_reach_the_upstream(proxy, h2app):
    """Rapid reset (CVE-2023-44487): a request cancelled at once costs the upstream nothing."""
    raw = RawH2(proxy.outbound)
    raw.until_stream_done(raw.request([(b":method", b"GET"), (b":path", b"/echo"), (b":scheme", b"http"),
                                       (b":authority", auth(h2app).encode())]))  # pooled upstream connection
    before = len(h2app.requests)
    for _ in range(50):  # under the rapid-reset limit; one write, so one read on loopback
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/slow?s=1&rapid=1"), (b":scheme", b"http"),
                                    (b":authority", auth(h2app).encode())], end_stream=True)
        raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    raw.flush()
    sid = raw.request([(b":method", b"GET"), (b":path", b"/echo?after=1"), (b":scheme", b"http"),
                       (b":authority", auth(h2app).encode())])
    events = raw.until_stream_done(sid)
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)
    rapid = [r for r in h2app.requests[before:] if b"rapid=1" in r[b":path"]]
    assert len(rapid) <= 2  # only if the kernel split that one write across reads
    raw.close()


def test_streams_of_one_connection_go_where_each_authority_says(proxy, h2app, loop_thread):
    """The direct path remembers an authority's endpoint per connection; each authority keeps its own."""
    other = loop_thread.run(H2Server().start())
    try:
        raw = RawH2(proxy.outbound)
        for round_ in range(3):
            for app in (h2app, other):
                sid = raw.request([(b":method", b"GET"), (b":path", b"/echo?r=%d" % round_), (b":scheme", b"http"),
                                   (b":authority", auth(app).encode())])
                events = raw.until_stream_done(sid)
                resp = next(e for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
                assert dict(resp.headers)[b":status"] == b"200"
                assert app.requests[-1][b":path"] == b"/echo?r=%d" % round_
                assert app.requests[-1][b":authority"] == auth(app).encode()
        assert len([r for r in other.requests if r[b":path"].startswith(b"/echo?r=")]) == 3
        raw.close()
    finally:
        loop_thread.run(other.stop())


def test_downloads_the_client_abandons_do_not_stall_the_shared_upstream_connection(proxy, h2app):
    """Each reset mid-response leaves bytes the proxy had buffered from upstream: their credit must go back, or
    a few abandoned downloads would exhaust the shared upstream connection's window for every other client."""
    before = h2app.connections
    resets = len(h2app.resets)
    for _ in range(8):  # 8 x 3 MB started, each abandoned after its first bytes
        raw = RawH2(proxy.outbound)
        sid = raw.request([(b":method", b"GET"), (b":path", b"/big?size=3000000"), (b":scheme", b"http"),
                           (b":authority", auth(h2app).encode())])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(isinstance(e, h2.events.DataReceived)
                                                      for e in (raw.events(timeout=1) or [])):
            pass
        raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        raw.flush()
        raw.close()
    with client() as c:
        r = c.get(proxy.url("outbound", "/big?size=1000000"), headers={"Host": auth(h2app)})
        assert len(r.content) == 1000000 - 1000000 % 256
    assert h2app.connections - before <= 1  # one shared upstream connection carried them all
    # ... and the upstream was told to stop each abandoned one (RFC 9113 section 8.7), not left to send it all.
    assert [code for _sid, code in h2app.resets[resets:]] == [h2.errors.ErrorCodes.CANCEL] * 8
