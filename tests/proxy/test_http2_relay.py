"""HTTP/2 stream relay without sockets: an h2 client's bytes in, the proxy's bytes out.

The proxy's server connection runs over an in-memory transport and a router
(the routing seam) that answers from code, so flow control, trailers, resets
and drain are checked frame by frame.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.errors
import h2.events

from meshctl_proxy import config
from meshctl_proxy.body import Body, BodyError
from meshctl_proxy.wire.h2limits import FloodGuard
import pytest
from ngh2 import NeverIndexedHeader

from .h2wire import GoawayFilter
from .memory import MemoryTransport

from meshctl_proxy.wire.h2headers import h2_fields
from meshctl_proxy.transport.h2_client import H2ClientConnection, H2Pool
from meshctl_proxy.transport.h2_connection import STREAM_WINDOW, StreamReset, UpstreamReset
from meshctl_proxy.transport.h2_server import H2ServerConnection
from meshctl_proxy.telemetry.metrics import Metrics
from meshctl_proxy.model import OUTBOUND, ConnectionContext, Endpoint, ProxyError, Request, Response
from meshctl_proxy.transport.server import Proxy


class CodeRouter:
    """A router that answers from a function instead of sending upstream."""

    def __init__(self, handler) -> None:
        self.handler = handler

    async def dispatch(self, request, upstream):
        return await self.handler(request)


class Harness:
    def __init__(self, handler, *, validate: bool = True, **env) -> None:
        cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0", **env})
        self.proxy = Proxy(cfg)
        self.proxy.routers[OUTBOUND] = CodeRouter(handler)
        ctx = ConnectionContext(OUTBOUND, ("127.0.0.1", 1), ("127.0.0.1", 2), None)
        self.server = H2ServerConnection(self.proxy, ctx, self.proxy.metrics.tcp(OUTBOUND, "src", None, None, "x"))
        self.transport = MemoryTransport()
        self.server.connection_made(self.transport)
        # validate=False: h2 sends whatever header block it is given (to send malformed ones).
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.client.initiate_connection()
        self.events: list = []
        self.goaways: list = []
        self.filter = GoawayFilter()  # h2's client would stop at a GOAWAY; we want to see what follows
        self.pump()

    def pump(self) -> list:
        """Move bytes both ways until quiet; return the client's new events."""
        new = []
        for _ in range(20):
            moved = False
            data = self.client.data_to_send()
            if data:
                self.server.data_received(data)
                moved = True
            out = self.transport.take()
            if out:
                out, goaways = self.filter.feed(out)
                self.goaways += goaways
                new += self.client.receive_data(out)
                moved = True
            if not moved:
                break
        self.events += new
        return new

    async def settle(self) -> list:
        new = []
        for _ in range(10):
            await asyncio.sleep(0)
            new += self.pump()
        return new

    def request(self, path: bytes, body: bytes = b"", end: bool = True, extra=()) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(b":method", b"POST"), (b":path", path), (b":authority", b"svc:80"),
                                       (b":scheme", b"http"), *extra], end_stream=not body and end)
        for i in range(0, len(body), 16384):
            last = i + 16384 >= len(body)
            self.client.send_data(sid, body[i:i + 16384], end_stream=end and last)
        self.pump()
        return sid


def test_request_body_credit_is_returned_only_as_the_upstream_takes_it():
    gate = asyncio.Event()
    seen = []

    async def handler(request):
        await gate.wait()
        while data := await request.body.read():
            seen.append(len(data))
        return Response(200, [], Body.of(b"ok"))

    async def main():
        h = Harness(handler)
        sid = h.request(b"/upload", body=b"a" * 200000, end=False)
        await h.settle()
        # Within the stream window: sent, but no credit back while nobody reads.
        assert not [e for e in h.events if isinstance(e, h2.events.WindowUpdated) and e.stream_id == sid]
        assert h.client.local_flow_control_window(sid) == STREAM_WINDOW - 200000
        gate.set()
        await h.settle()
        assert sum(seen) == 200000
        assert h.client.local_flow_control_window(sid) == STREAM_WINDOW  # credit returned after consumption
        h.client.end_stream(sid)
        await h.settle()
        assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in h.events)

    asyncio.run(main())


def test_response_window_is_honoured_then_resumed_by_window_update():
    big = b"z" * 200_000

    async def handler(request):
        return Response(200, [], Body.of(big))

    async def main():
        h = Harness(handler)
        sid = h.request(b"/big")
        await h.settle()
        got = sum(len(e.data) for e in h.events if isinstance(e, h2.events.DataReceived))
        assert got == 65535  # the client's default window: the proxy waits for credit
        h.client.acknowledge_received_data(got, sid)
        for _ in range(5):
            await h.settle()
            got = sum(len(e.data) for e in h.events if isinstance(e, h2.events.DataReceived))
            new = [e for e in h.events if isinstance(e, h2.events.DataReceived)]
            if got >= len(big):
                break
            h.client.acknowledge_received_data(sum(len(e.data) for e in new[-4:]), sid)
        assert got <= len(big)

    asyncio.run(main())


def test_trailers_and_status_are_relayed():
    async def handler(request):
        body = Body.of(b"payload", trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"")])
        return Response(200, [(b"content-type", b"application/grpc"), (b"connection", b"close")], body)

    async def main():
        h = Harness(handler)
        sid = h.request(b"/svc/Method", body=b"\x00\x00\x00\x00\x00", extra=[(b"te", b"trailers")])
        await h.settle()
        resp = next(e for e in h.events if isinstance(e, h2.events.ResponseReceived))
        assert dict(resp.headers)[b":status"] == b"200"
        assert b"connection" not in dict(resp.headers)  # connection-specific: never in HTTP/2
        trailers = next(e for e in h.events if isinstance(e, h2.events.TrailersReceived))
        assert trailers.stream_id == sid and dict(trailers.headers)[b"grpc-status"] == b"0"

    asyncio.run(main())


def test_upstream_reset_code_reaches_the_client():
    async def handler(request):
        raise UpstreamReset(h2.errors.ErrorCodes.REFUSED_STREAM)

    async def main():
        h = Harness(handler)
        sid = h.request(b"/x")
        await h.settle()
        reset = next(e for e in h.events if isinstance(e, h2.events.StreamReset))
        assert reset.stream_id == sid and reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM

    asyncio.run(main())


def test_drain_sends_goaway_and_finishes_open_streams():
    gate = asyncio.Event()

    async def handler(request):
        await gate.wait()
        return Response(200, [], Body.of(b"late"))

    async def main():
        h = Harness(handler)
        sid = h.request(b"/slow")
        await h.settle()
        h.server.drain()
        await h.settle()
        assert h.goaways == [(sid, 0)]
        assert not h.transport.closed
        gate.set()
        await h.settle()
        data = b"".join(e.data for e in h.events if isinstance(e, h2.events.DataReceived))
        assert data == b"late"
        assert h.transport.closed  # nothing left open: closed

    asyncio.run(main())


def test_h2_fields_drops_pseudo_and_connection_specific_fields_and_lowers_names():
    got = h2_fields([(b":method", b"GET"), (b"te", b"trailers"), (b"te", b"gzip"), (b"Connection", b"x"),
                     (b"upgrade", b"h2c"), (b"X-A", b"1"), (b"host", b"h")], skip=b"host")
    assert got == [(b"te", b"trailers"), (b"x-a", b"1")]


def test_h2_fields_keeps_credentials_out_of_the_hpack_table():
    got = h2_fields([(b"Authorization", b"Bearer t"), (b"cookie", b"s=1"), (b"cookie", b"x" * 40),
                     NeverIndexedHeader(b"x-secret", b"v"), (b"x-plain", b"v")])
    assert [type(f) is NeverIndexedHeader for f in got] == [True, True, False, True, False]
    assert got[0] == (b"authorization", b"Bearer t")


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc:80"), (b":path", b"/")]


@pytest.mark.parametrize("headers", [
    REQUEST + [(b"X-A", b"1")],
    REQUEST + [(b"", b"1")],
    REQUEST + [(b"x a", b"1")],
    REQUEST + [(b"x\xffa", b"1")],
    REQUEST + [(b"keep-alive", b"1")],
    REQUEST + [(b"transfer-encoding", b"chunked")],
    REQUEST + [(b"te", b"gzip")],
    REQUEST + [(b"x-a", b"a\x00b")],
    REQUEST + [(b"x-a", b"a\nb")],
    REQUEST + [(b"x-a", b"a\t")],
    REQUEST + [(b"host", b"a"), (b"host", b"a")],
    REQUEST + [(b"host", b"other:80")],
    REQUEST + [(b":protocol", b"websocket")],
    [(b"x-a", b"1")] + REQUEST,
    REQUEST + [(b":method", b"POST")],
    REQUEST[1:],
    REQUEST[:1] + REQUEST[2:],
    REQUEST[:3],
    REQUEST[:3] + [(b":path", b"")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    REQUEST + [(b":status", b"200")],
])
def test_malformed_request_blocks_are_refused_with_protocol_error(headers):
    """RFC 9113 sections 8.1.1, 8.2 and 8.3: each is a stream error (PROTOCOL_ERROR) and never reaches the router."""
    seen = []

    async def handler(request):
        seen.append(request)
        return Response(200, [], Body.of(b"ok"))

    async def main():
        h = Harness(handler, validate=False)
        sid = h.client.get_next_available_stream_id()
        h.client.send_headers(sid, headers, end_stream=True)
        await h.settle()
        resets = [e for e in h.events if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]
        assert resets and resets[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert not [e for e in h.events if isinstance(e, h2.events.ResponseReceived)]
        assert not seen
        good = h.client.get_next_available_stream_id()  # the connection goes on
        h.client.send_headers(good, REQUEST, end_stream=True)
        await h.settle()
        assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == good for e in h.events)

    asyncio.run(main())


def test_well_formed_request_blocks_are_served():
    seen = []

    async def handler(request):
        seen.append(request)
        return Response(200, [], Body.of(b"ok"))

    async def main():
        h = Harness(handler, validate=False)
        for headers in (REQUEST + [(b"te", b"Trailers"), (b"x-a", b""), (b"x-b", b"a b")],
                        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")]):
            sid = h.client.get_next_available_stream_id()
            h.client.send_headers(sid, headers, end_stream=True)
            await h.settle()
            resp = next(e for e in h.events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
            assert dict(resp.headers)[b":status"] == b"200"
        assert [r.target for r in seen] == [b"/", b"/"]
        assert seen[1].authority == "h"  # Host stands in for :authority
        assert (b"x-b", b"a b") in list(seen[0].headers)
        # A well-formed CONNECT is still refused: the proxy does not offer it.
        sid = h.client.get_next_available_stream_id()
        h.client.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"h:443")], end_stream=True)
        await h.settle()
        resets = [e for e in h.events if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]
        assert resets and resets[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert len(seen) == 2

    asyncio.run(main())


class Upstream:
    """The proxy's upstream connection over an in-memory transport, facing an h2 server that sends what it is told."""

    def __init__(self) -> None:
        self.pool = H2Pool(None, Metrics(), OUTBOUND, connect_timeout=1.0)
        endpoint = Endpoint("127.0.0.1", 1)
        self.conn = H2ClientConnection(self.pool, endpoint, self.pool.metrics.tcp(OUTBOUND, "dst", None, "x", "no"))
        self.pool.conns[endpoint] = [self.conn]
        self.transport = MemoryTransport()
        self.conn.connection_made(self.transport)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
        self.server.initiate_connection()
        self.requests: list = []
        self.pump()

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            out = self.transport.take()
            if out:
                self.requests += [e for e in self.server.receive_data(out) if isinstance(e, h2.events.RequestReceived)]
                moved = True
            data = self.server.data_to_send()
            if data:
                self.conn.data_received(data)
                moved = True
            if not moved:
                break

    async def exchange(self, head, *, data: bytes = b"", trailers=None):
        """Send a request through the proxy's connection; the server answers *head*, *data*, *trailers*."""
        task = asyncio.ensure_future(self.conn.send(Request(b"GET", b"/", "svc", [], protocol="h2")))
        for _ in range(3):
            await asyncio.sleep(0)
            self.pump()
        sid = self.requests[-1].stream_id
        self.server.send_headers(sid, head, end_stream=not data and not trailers)
        if data:
            self.server.send_data(sid, data, end_stream=not trailers)
        if trailers:
            self.server.send_headers(sid, trailers, end_stream=True)
        self.pump()
        return await asyncio.wait_for(task, 2)


@pytest.mark.parametrize("head", [
    [(b"x-a", b"1")],
    [(b":status", b"2xx")],
    [(b":status", b"20")],
    [(b":status", b"200"), (b":path", b"/")],
    [(b":status", b"200"), (b"Server", b"x")],
])
def test_malformed_upstream_response_heads_are_502(head):
    async def main():
        up = Upstream()
        with pytest.raises(ProxyError) as err:
            await up.exchange(head, data=b"x")
        assert err.value.status == 502 and "malformed" in err.value.reason
        response = await up.exchange([(b":status", b"204"), (b"x-a", b"1")])  # the connection goes on
        assert response.status == 204 and list(response.headers) == [(b"x-a", b"1")]

    asyncio.run(main())


def test_upstream_trailers_pass_and_malformed_ones_reset_the_stream():
    async def main():
        up = Upstream()
        response = await up.exchange([(b":status", b"200")], data=b"x", trailers=[(b"grpc-status", b"0")])
        assert await response.body.read_all(100) == b"x" and response.body.trailers == [(b"grpc-status", b"0")]
        response = await up.exchange([(b":status", b"200")], data=b"x", trailers=[(b":status", b"200")])
        with pytest.raises(StreamReset) as err:
            await response.body.read_all(100)
        assert err.value.code == h2.errors.ErrorCodes.PROTOCOL_ERROR

    asyncio.run(main())


def test_flood_guard_counts_per_second():
    g = FloodGuard(max_resets=3, max_pings=2, max_settings=1)
    assert [g.on_reset(0.1 * i) for i in range(4)][-1] is not None
    assert g.on_reset(5.0) is None  # a new second starts afresh
    assert g.on_ping(0.0) is None and g.on_ping(0.5) is None and g.on_ping(0.9) is not None
    assert g.on_settings(0.0) is None and g.on_settings(0.1) is not None


def test_goaway_filter_finds_frames_across_feed_boundaries():
    from hyperframe.frame import DataFrame, GoAwayFrame

    data = DataFrame(1, data=b"x" * 100).serialize()
    goaway = GoAwayFrame(0, last_stream_id=7, error_code=0).serialize()
    stream = b"P" * 24 + data + goaway + data
    for cut in (1, 5, 24, 30, 24 + len(data) + 3, len(stream) - 2):
        f = GoawayFilter(skip=24)
        out1, g1 = f.feed(stream[:cut])
        out2, g2 = f.feed(stream[cut:])
        assert out1 + out2 == b"P" * 24 + data + data
        assert g1 + g2 == [(7, 0)]


def _one_read_flood(send) -> list:
    """The client's frames from *send* reach the proxy in one read; the GOAWAYs it answers with."""
    async def main():
        async def handler(request):
            return Response(200, [], Body.of(b"ok"))

        h = Harness(handler)
        send(h.client)
        h.server.data_received(h.client.data_to_send())
        out, goaways = h.filter.feed(h.transport.take())
        assert h.transport.eof  # half-closed after the GOAWAY
        return goaways

    return asyncio.run(main())


def test_a_flood_libnghttp2_catches_in_one_read_is_still_enhance_your_calm():
    # 1,500 PINGs in one read: libnghttp2 refuses to queue that many ACKs and gives up on the session.
    goaways = _one_read_flood(lambda c: [c.ping(b"%08d" % i) for i in range(1500)])
    assert [code for _last, code in goaways] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]


def test_resets_past_libnghttp2s_own_bucket_in_one_read_are_enhance_your_calm():
    # More resets in one read than libnghttp2's own rapid-reset bucket holds: it would close with
    # INTERNAL_ERROR; the proxy's GOAWAY says why instead.
    def send(c):
        for _ in range(2500):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, REQUEST, end_stream=True)
            c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)

    goaways = _one_read_flood(send)
    assert [code for _last, code in goaways] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]


def test_a_body_shorter_than_its_content_length_resets_the_stream_and_fails_the_relay():
    """RFC 9113 section 8.1.1: DATA that does not add up to content-length is malformed (libnghttp2 resets it)."""
    started, failures = [], []

    async def handler(request):
        started.append(request)
        try:
            await request.body.read_all(1000)
        except (BodyError, asyncio.CancelledError) as exc:  # the body failed, or the relay was cancelled
            failures.append(exc)
            raise
        return Response(200, [], Body.of(b"ok"))

    async def main():
        h = Harness(handler)
        sid = h.request(b"/upload", end=False, extra=[(b"content-length", b"10")])
        await h.settle()  # the relay is waiting for the body
        h.client.send_data(sid, b"12345", end_stream=True)
        await h.settle()
        resets = [e for e in h.events if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]
        assert resets and resets[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert len(started) == len(failures) == 1  # the relay stopped instead of waiting for five more bytes
        assert not [e for e in h.events if isinstance(e, h2.events.ResponseReceived)]
        assert sid not in h.server.streams

    asyncio.run(main())


def test_a_response_that_ends_before_its_request_gives_back_the_connections_credit():
    """An upstream may answer without reading the request (RFC 9113 section 8.1): the proxy then resets the
    client's stream with NO_ERROR after the response, and credits what nobody will read to the connection,
    which would otherwise stall every other stream after a few such requests."""
    async def handler(request):
        return Response(413, [], Body.of(b"too big"))

    async def main():
        h = Harness(handler)
        for _ in range(8):  # 8 x 200 KB: h2 refuses to send past the 1 MiB connection window, so the
            sid = h.request(b"/upload", body=b"x" * 200_000, end=False)  # credit must have come back
            await h.settle()
            got = [e for e in h.events if getattr(e, "stream_id", None) == sid]
            assert dict(next(e for e in got if isinstance(e, h2.events.ResponseReceived)).headers)[b":status"] == b"413"
            assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"too big"
            resets = [e for e in got if isinstance(e, h2.events.StreamReset)]
            assert resets and resets[0].error_code == h2.errors.ErrorCodes.NO_ERROR
        sid = h.request(b"/after", body=b"y" * 100_000)  # and the connection still carries bodies
        await h.settle()
        assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid for e in h.events)

    asyncio.run(main())


def test_a_discarded_body_credits_what_it_held_and_what_comes_later():
    from meshctl_proxy.body import EMPTY

    credited = []
    body = Body(None, on_consumed=credited.append)
    body.feed(b"abc")
    body.discard()
    body.feed(b"de")
    assert credited == [3, 2]
    with pytest.raises(BodyError):  # never read as a (truncated) complete body
        body.read_nowait()
    EMPTY.discard()  # the shared empty body is left as it is
    assert EMPTY.read_nowait() == b""


def test_a_request_body_sender_stops_when_the_upstream_closes_the_stream():
    """An upstream may answer and close the stream before taking the whole request (RFC 9113 section 8.1): the
    task sending the rest, waiting for credit that will never come, must end (it held its chunk forever)."""
    async def main():
        up = Upstream()
        body = Body(None)
        task = asyncio.ensure_future(up.conn.send(Request(b"POST", b"/", "svc", [], body, protocol="h2")))
        body.feed(b"x" * 300_000)  # more than the upstream's 64 KiB window
        for _ in range(3):
            await asyncio.sleep(0)
            up.pump()
        sid = up.requests[-1].stream_id
        assert up.conn.body_tasks  # sending, and stuck on the window
        up.server.send_headers(sid, [(b":status", b"413")], end_stream=True)
        up.server.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
        up.pump()
        assert (await asyncio.wait_for(task, 2)).status == 413
        for _ in range(3):
            await asyncio.sleep(0)
        assert not up.conn.body_tasks

    asyncio.run(main())
