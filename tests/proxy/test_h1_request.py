"""The request as forwarded (transport.h1_request): what the proxy changes in an HTTP/1.x request head, no sockets."""

from __future__ import annotations

from meshctl_proxy.body import EMPTY
from meshctl_proxy.model import OUTBOUND, ConnectionContext
from meshctl_proxy.transport.h1_request import RequestMaker, absolute_form
from meshctl_proxy.wire import http1

VIA = (b"via", b"1.1 test-proxy")


def heads(raw: bytes) -> list:
    return [ev for ev in http1.RequestReader().feed(raw) if isinstance(ev, http1.RequestHead)]


def maker(orig_dst=("10.0.0.7", 8080)) -> RequestMaker:
    return RequestMaker(ConnectionContext(OUTBOUND, ("127.0.0.1", 50000), ("127.0.0.1", 4140), orig_dst), VIA)


def test_origin_form_keeps_target_and_host_and_gains_via():
    (head,) = heads(b"GET /a?b=1 HTTP/1.1\r\nHost: app:80\r\nAccept: */*\r\n\r\n")
    request = maker().request(head, EMPTY)
    assert (request.method, request.target, request.authority) == (b"GET", b"/a?b=1", "app:80")
    assert request.header(b"host") == b"app:80"
    assert request.headers[-1] == VIA
    assert request.protocol == "http/1" and request.body is EMPTY


def test_absolute_form_becomes_origin_form_and_its_authority_wins_over_host():
    (head,) = heads(b"GET http://other:81/p HTTP/1.1\r\nHost: app:80\r\n\r\n")
    request = maker().request(head, EMPTY)
    assert (request.target, request.authority) == (b"/p", "other:81")
    assert [v for k, v in request.headers if k.lower() == b"host"] == [b"other:81"]


def test_http10_without_host_gets_the_address_it_was_sent_to():
    (head,) = heads(b"GET / HTTP/1.0\r\n\r\n")
    request = maker().request(head, EMPTY)
    assert request.header(b"host") == b"10.0.0.7:8080"
    assert maker(orig_dst=None).request(heads(b"GET / HTTP/1.0\r\n\r\n")[0], EMPTY).header(b"host") is None


def test_the_authority_str_is_reused_while_it_repeats_and_follows_a_change():
    m = maker()
    first = m.request(heads(b"GET / HTTP/1.1\r\nHost: app:80\r\n\r\n")[0], EMPTY)
    second = m.request(heads(b"GET / HTTP/1.1\r\nHost: app:80\r\n\r\n")[0], EMPTY)
    third = m.request(heads(b"GET / HTTP/1.1\r\nHost: db:5432\r\n\r\n")[0], EMPTY)
    assert first.authority is second.authority
    assert third.authority == "db:5432"


def test_absolute_form_parsing():
    assert absolute_form(b"http://h:1/x/y") == (b"h:1", b"/x/y")
    assert absolute_form(b"HTTPS://h") == (b"h", b"/")
    assert absolute_form(b"/x") is None
    assert absolute_form(b"*") is None
