"""The request as forwarded from HTTP/2 (transport.h2_stream.RequestMaker), no sockets.

The HEADERS events are libnghttp2's own, from an h2 client's bytes, so the maker sees
exactly what the server connection hands it.
"""

from __future__ import annotations

import h2.config
import h2.connection
import ngh2
import pytest

from meshctl_proxy.body import EMPTY
from meshctl_proxy.model import OUTBOUND, ConnectionContext
from meshctl_proxy.transport.h2_stream import RequestMaker
from meshctl_proxy.wire.h2headers import LoopDetected, MalformedHeaders
from meshctl_proxy.wire.loop_marker import LoopMarker

MARKER = LoopMarker(b"meshctl-test-out")
CTX = ConnectionContext(OUTBOUND, ("127.0.0.1", 50000), ("127.0.0.1", 4140), None)


def received(*requests: tuple[list, bool]) -> list:
    """libnghttp2's RequestReceived events for *requests* ((headers, end_stream) each), sent by an h2 client."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    client.initiate_connection()
    for headers, end_stream in requests:
        client.send_headers(client.get_next_available_stream_id(), headers, end_stream=end_stream)
    server = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    server.initiate_connection({})
    server.receive_data(client.data_to_send())
    return [ev for ev in server.events() if isinstance(ev, ngh2.RequestReceived)]


def head(method=b"GET", path=b"/a", authority=b"svc:80", extra=()) -> list:
    pseudo = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
    if authority is not None:
        pseudo.append((b":authority", authority))
    return [*pseudo, *extra]


def test_a_request_gains_this_sides_via_and_keeps_its_fields():
    (ev,) = received((head(extra=[(b"accept", b"*/*")]), True))
    request = RequestMaker(CTX, MARKER).request(ev, None)
    assert (request.method, request.target, request.authority, request.scheme) == (b"GET", b"/a", "svc:80", b"http")
    assert request.header(b"accept") == b"*/*"
    assert request.headers[-1] == (b"via", b"2 meshctl-test-out")
    assert request.protocol == "h2" and request.body is EMPTY and request.context is CTX


def test_the_authority_comes_from_host_when_the_request_has_no_authority():
    (ev,) = received((head(authority=None, extra=[(b"host", b"web:8080")]), True))
    assert RequestMaker(CTX, MARKER).request(ev, None).authority == "web:8080"


def test_a_request_with_a_body_streams_it_with_its_declared_length_and_the_credit_callback():
    (ev,) = received((head(method=b"POST", extra=[(b"content-length", b"5")]), False))
    consumed = []
    request = RequestMaker(CTX, MARKER).request(ev, lambda sid, n: consumed.append((sid, n)))
    assert request.body is not EMPTY and request.body.length == 5
    request.body.feed(b"hello")
    assert request.body.read_nowait() == b"hello" and consumed == [(ev.stream_id, 5)]


def test_connect_is_not_offered():
    (ev,) = received(([(b":method", b"CONNECT"), (b":authority", b"db:5432")], True))
    assert RequestMaker(CTX, MARKER).request(ev, None) is None


def test_a_request_this_side_forwarded_before_is_a_loop_and_another_sides_mark_is_not():
    (ours, other) = received((head(extra=[(b"via", b"2 meshctl-test-out")]), True),
                             (head(extra=[(b"via", b"2 meshctl-test-inb")]), True))
    maker = RequestMaker(CTX, MARKER)
    with pytest.raises(LoopDetected):
        maker.request(ours, None)
    assert maker.request(other, None).headers[-2:] == [(b"via", b"2 meshctl-test-inb"), (b"via", b"2 meshctl-test-out")]


def test_malformed_blocks_libnghttp2_lets_through_are_refused():
    (ev,) = received((head(authority=b"svc:80", extra=[(b"host", b"other:80")]), True))
    with pytest.raises(MalformedHeaders):  # Host against :authority (RFC 9113 section 8.3.1)
        RequestMaker(CTX, MARKER).request(ev, None)


def test_the_authority_str_is_made_once_for_requests_that_repeat_it():
    first, second = received((head(), True), (head(path=b"/b"), True))
    maker = RequestMaker(CTX, MARKER)
    assert maker.request(first, None).authority is maker.request(second, None).authority
