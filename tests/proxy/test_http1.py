"""Sans-IO HTTP/1 framing and validation: bytes in, events or refusals out."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import End, H1Error, Interim, RequestHead, RequestReader, ResponseHead, ResponseReader, Upgrade

_NAMES = ("End", "H1Error", "Interim", "RequestHead", "RequestReader", "ResponseHead", "ResponseReader", "Upgrade")


def _source_module():
    """http1.py run as plain Python, whether or not the compiled extension is what imports."""
    path = Path(http1.__file__).with_name("http1.py")
    loader = importlib.machinery.SourceFileLoader("meshctl_proxy._http1_source", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    sys.modules[loader.name] = module  # dataclasses look their module up while the class is made
    loader.exec_module(module)
    return module


_SOURCE = _source_module()


@pytest.fixture(autouse=True, params=["imported", "source"])
def implementation(request, monkeypatch):
    """Every test twice: with the module as imported (compiled by setup.py when built) and as source.

    The two must never differ: the compiled one is what runs in the proxy, the
    source is the reference and what runs where no compiler was available.
    """
    module = http1 if request.param == "imported" else _SOURCE
    monkeypatch.setitem(globals(), "http1", module)
    for name in _NAMES:
        monkeypatch.setitem(globals(), name, getattr(module, name))
    return module


_IMPORTED = http1


def test_both_implementations_are_exercised(implementation):
    reader = implementation.RequestReader()
    assert type(reader).__module__ == implementation.__name__
    if implementation is _SOURCE:
        assert _SOURCE.__file__.endswith("http1.py") and _SOURCE is not _IMPORTED
    # (Whether the imported one is compiled is checked where it must be: scripts/setup.sh.)


def events(data: bytes, reader=None):
    reader = reader or RequestReader()
    return reader.feed(data)


def test_simple_request_head_and_end():
    evs = events(b"GET /a?b=1 HTTP/1.1\r\nHost: svc:80\r\nX-A: 1\r\n\r\n")
    assert [type(e) for e in evs] == [RequestHead, End]
    head = evs[0]
    assert (head.method, head.target, head.version, head.host) == (b"GET", b"/a?b=1", b"1.1", b"svc:80")
    assert head.headers == [(b"Host", b"svc:80"), (b"X-A", b"1")]
    assert head.keep_alive and head.content_length is None and not head.chunked


def test_body_split_across_feeds_is_streamed():
    r = RequestReader()
    first = r.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    assert [type(e) for e in first] == [RequestHead, bytes] and first[1] == b"01234"
    assert r.feed(b"56789") == [b"56789", End(None)]


def test_chunked_body_with_trailers():
    evs = events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    assert evs[0].chunked and evs[0].content_length is None
    assert b"".join(e for e in evs if type(e) is bytes) == b"abcde"
    assert evs[-1] == End([(b"X-Sum", b"5")])


def test_hop_by_hop_and_connection_named_headers_removed():
    evs = events(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n"
                 b"X-Secret: s\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Keep: k\r\n\r\n")
    assert evs[0].headers == [(b"Host", b"a"), (b"X-Keep", b"k")]


def test_pipelined_requests():
    evs = events(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e.target for e in evs if type(e) is RequestHead] == [b"/1", b"/2"]


def test_expect_continue_and_upgrade_flags():
    head = events(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")[0]
    assert head.expect_continue
    evs = events(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW")
    assert evs[0].upgrade == b"websocket"
    assert evs[-1] == Upgrade(b"RAW")


@pytest.mark.parametrize("raw,status", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (http1.MAX_HEAD_BYTES + 1) + b"\r\n\r\n", 431),
])
def test_ambiguous_or_malformed_requests_are_refused(raw, status):
    with pytest.raises(H1Error) as err:
        RequestReader().feed(raw)
    assert err.value.status == status


def test_oversized_head_fed_in_small_pieces_is_refused_before_it_completes():
    r = RequestReader()
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    with pytest.raises(H1Error) as err:
        for _ in range(100):
            r.feed(b"y" * 1024)
    assert err.value.status == 431


def test_reader_stays_failed_after_an_error():
    r = RequestReader()
    with pytest.raises(H1Error):
        r.feed(b"GET / HTTP/1.1\nHost: a\n\n")
    with pytest.raises(H1Error):
        r.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_refused_upgrade_parses_the_tail_as_http():
    r = RequestReader()
    evs = r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nGET /next HTTP/1.1\r\nHo")
    tail = evs[-1].tail
    evs = r.after_upgrade_refused(tail + b"st: a\r\n\r\n")
    assert evs[0].target == b"/next"


def test_response_reader_interim_then_final_and_keepalive():
    r = ResponseReader()
    r.expect(b"POST")
    evs = r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
    assert [type(e) for e in evs] == [Interim, ResponseHead, bytes, End]
    assert evs[1].status == 200 and evs[1].keep_alive and evs[1].headers == [(b"Content-Length", b"2")]


def test_response_to_head_has_no_body_and_is_not_reused():
    r = ResponseReader()
    r.expect(b"HEAD")
    evs = r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert [type(e) for e in evs] == [ResponseHead, End]
    assert r.no_reuse


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
])
def test_smuggling_shaped_responses_are_refused(raw):
    r = ResponseReader()
    r.expect(b"GET")
    with pytest.raises(H1Error):
        r.feed(raw)


def test_serialisation():
    assert http1.request_head(b"GET", b"/", [(b"host", b"a")], chunked=True) == (
        b"GET / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
    assert http1.response_head(404, b"", [], close=True) == b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n"
    assert http1.chunk(b"abc") == b"3\r\nabc\r\n"
    assert http1.last_chunk([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"
    err = http1.error_response(400, "bad")
    assert err.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"meshctl-proxy-error: bad\r\n" in err
