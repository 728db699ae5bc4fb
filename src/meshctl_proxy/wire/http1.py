"""HTTP/1.1 message framing and validation, sans-IO.

Bytes go in through ``feed()``, events come out; nothing here touches a
socket, so every rule below is tested with plain byte strings
(``tests/proxy/test_http1.py``).

Parsing is done by llhttp (through httptools), which is already strict: it
rejects Content-Length together with Transfer-Encoding, duplicate
Content-Length (even equal ones), bare LF line endings, obs-fold, bad header
tokens and control characters, and malformed or overflowing chunk sizes.  What
it lets through, and this module refuses (RFC 9112 unless noted):

- HTTP/0.9 requests (``GET /`` with no version) and versions other than 1.0/1.1;
- a missing or repeated Host in HTTP/1.1 (section 3.2: 400);
- Transfer-Encoding in an HTTP/1.0 message (section 6.1: faulty, close);
- a head larger than MAX_HEAD_BYTES (llhttp has no limit of its own: 431);
- CONNECT (a proxy is not a tunnel for arbitrary hosts here: 501);
- a request carrying one of the proxy's own Via marks (a forwarding loop,
  RFC 9110 section 7.6.3: 508, :mod:`meshctl_proxy.wire.loop_marker`);
- responses: the same header rules, and a body is never guessed for HEAD.

And what it changes (docs/security.md):

- ``Connection`` cannot make framing or routing headers hop-by-hop:
  Content-Length, Transfer-Encoding and Host stay what they are, so the body
  forwarded and the framing forwarded agree (a Content-Length dropped while
  its body went on let the upstream read a second request out of the body);
- ``Upgrade: h2c`` is removed and the request goes on as plain HTTP/1.1, as
  Linkerd does: RFC 9113 section 3.1 retired the upgrade, and forwarded it
  would let a client speak HTTP/2 straight to the upstream past the proxy.
  ``HTTP2-Settings`` (only ever meaningful with it) is hop-by-hop.

Events: :class:`RequestHead` / :class:`ResponseHead`, ``bytes`` (body data),
:class:`End` (with trailers), :class:`Interim` (1xx), :class:`Upgrade` (the
rest of the stream belongs to a tunnel).
"""

from __future__ import annotations

import dataclasses

import httptools

from meshctl_proxy.wire.fields import Headers
from meshctl_proxy.wire.loop_marker import LOOP_REASON, LOOP_STATUS

# The whole request head (request line and headers).  llhttp buffers a
# header it has not finished without bound, so we count ourselves.  64 KiB:
# nginx allows 4 x 8 KiB lines, Node 16 KiB, Go 1 MiB; 64 KiB keeps large
# cookies and JWTs working while bounding memory per connection.
MAX_HEAD_BYTES = 64 * 1024

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward.
# Proxy-Connection is not standard but old clients send it (as curl once did).
# HTTP2-Settings belongs to the h2c upgrade alone (RFC 7540 section 3.2.1 makes it connection-specific).
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
                        b"http2-settings"))
# What Connection may not name: the framing the proxy forwards must describe the body it forwards,
# and an HTTP/1.1 request needs its Host (RFC 9112 section 3.2).  Transfer-Encoding is hop-by-hop
# anyway and re-written from the body's framing.
NEVER_CONNECTION_NAMED = frozenset((b"content-length", b"transfer-encoding", b"host"))
# RFC 9113 section 3.1: the h2c upgrade is obsolete; Linkerd strips it.
H2C = b"h2c"


class H1Error(Exception):
    """The peer sent something we refuse; ``status`` is the response to give (400, 431, 501, 505)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Head:
    """Fields by name; a plain class rather than a dataclass so that the compiled build
    (http1.pxd) makes it an extension type with a C constructor: two are made per request."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self._fields)


class RequestHead(_Head):
    _fields = ("method", "target", "version", "headers", "host", "keep_alive", "content_length", "chunked",
               "expect_continue", "upgrade")
    __slots__ = _fields

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: Headers, host: bytes | None,
                 keep_alive: bool, content_length: int | None, chunked: bool, expect_continue: bool,
                 upgrade: bytes | None) -> None:
        self.method = method
        self.target = target
        self.version = version  # b"1.0" or b"1.1"
        self.headers = headers  # end-to-end headers (hop-by-hop removed), in order, names as sent
        self.host = host
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade  # Upgrade header value when Connection: upgrade


class ResponseHead(_Head):
    _fields = ("status", "reason", "version", "headers", "keep_alive", "content_length", "chunked")
    __slots__ = _fields

    def __init__(self, status: int, reason: bytes, version: bytes, headers: Headers, keep_alive: bool,
                 content_length: int | None, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked


@dataclasses.dataclass(slots=True)
class Interim:
    status: int
    headers: Headers


@dataclasses.dataclass(frozen=True, slots=True)
class End:
    trailers: Headers | None = None


END = End()  # shared by every message without trailers (nothing mutates an End)


@dataclasses.dataclass(slots=True)
class Upgrade:
    tail: bytes  # bytes after the head, which belong to the upgraded protocol


def _split_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


_VERSION_BYTES = {"1.1": b"1.1", "1.0": b"1.0"}  # the only two a head gets past the version check with

_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close", b"upgrade"))


def drop_connection_named(headers: Headers, hop: dict[bytes, list[bytes]]) -> Headers:
    """RFC 9110 section 7.6.1: headers that Connection names are hop-by-hop too."""
    conn = hop.get(b"connection")
    if conn:
        if len(conn) == 1 and conn[0].lower() in _PLAIN_CONNECTION:  # the usual "keep-alive" / "close"
            return headers
        named = {t for v in conn for t in _split_tokens(v)} - {b"close", b"keep-alive", b"upgrade"}
        named -= NEVER_CONNECTION_NAMED
        if named:
            return [(n, v) for n, v in headers if n.lower() not in named]
    return headers


def without_h2c(upgrade: bytes) -> bytes | None:
    """The Upgrade value with ``h2c`` taken out of its list (None when nothing else is left)."""
    protocols = [p.strip() for p in upgrade.split(b",") if p.strip()]
    kept = [p for p in protocols if p.lower() != H2C]
    if len(kept) == len(protocols):
        return upgrade
    return b", ".join(kept) or None


# Only names of these lengths can be hop-by-hop or framing headers (Host 4, Expect 6,
# Content-Length 14, Via 3): other names skip lower() and set lookups, the per-header hot path.
# Responses have no Host or Expect, so Date and Server (4, 6) skip them too.
_REQUEST_WATCHED_LENGTHS = frozenset(len(n) for n in HOP_BY_HOP | {b"host", b"expect", b"content-length", b"via"})
_RESPONSE_WATCHED_LENGTHS = frozenset(len(n) for n in HOP_BY_HOP | {b"content-length"})


class _Reader:
    """Shared parsing machinery for requests and responses."""

    _watched_lengths = _REQUEST_WATCHED_LENGTHS

    __slots__ = ("_parser", "_events", "_raw", "_url", "_head_bytes", "_pending", "_in_head", "_trailers",
                 "_in_body", "_upgraded", "_failed", "_hop", "_hosts", "_length", "_expect", "_counting", "_via",
                 "_markers", "_dropped_upgrade", "_synthetic")

    def __init__(self) -> None:
        self._parser = None
        self._events: list = []
        self._raw: Headers = []
        self._url = b""
        self._head_bytes = 0  # exact size of the head parsed so far
        self._pending = 0  # bytes fed while a head was incomplete (llhttp holds partial lines)
        self._in_head = False
        self._trailers: Headers | None = None
        self._in_body = False
        self._upgraded = False
        self._failed = False
        self._hop: dict[bytes, list[bytes]] = {}
        self._hosts: list[bytes] = []
        self._length: bytes | None = None
        self._expect: bytes | None = None
        self._counting = False
        self._via: list[bytes] | None = None
        self._markers: tuple = ()  # the proxy's LoopMarkers a request must not carry (RequestReader)
        self._dropped_upgrade = False  # the head's Upgrade was h2c alone and is not forwarded
        self._synthetic = False  # parsing the stand-in head after a dropped upgrade (see _resume_plain)

    # llhttp callbacks -----------------------------------------------------
    def on_message_begin(self) -> None:
        self._raw = []
        self._url = b""
        self._trailers = None
        if self._hop:
            self._hop = {}
        if self._hosts:
            self._hosts = []
        self._length = self._expect = None
        self._via = None
        self._in_head = True
        self._head_bytes = 0
        self._pending = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if self._counting:
            self._head_bytes += len(url)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise H1Error(431, "request head too large")

    def on_status(self, status: bytes) -> None:
        self._url += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:  # llhttp reports chunked trailers through the same callback
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            return
        n = len(name)
        if self._counting:
            self._head_bytes += n + len(value) + 4
            if self._head_bytes > MAX_HEAD_BYTES:
                raise H1Error(431, "request header fields too large")
        if n in self._watched_lengths:
            low = name.lower()
            if low in HOP_BY_HOP:
                self._hop.setdefault(low, []).append(value)
                return
            if low == b"host":
                self._hosts.append(value)
            elif low == b"content-length":
                self._length = value
            elif low == b"expect":
                self._expect = value
            elif low == b"via":
                if self._via is None:
                    self._via = []
                self._via.append(value)
        self._raw.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self._in_body:
            self._events.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = False
        self._events.append(End(self._trailers) if self._trailers else END)

    # driving ----------------------------------------------------------------
    def feed(self, data: bytes) -> list:
        """Parse *data*; return the events it completes.  Raises H1Error."""
        if self._failed:
            raise H1Error(400, "connection already failed")
        events = self._events = []
        # A head can only outgrow the limit inside this feed if the bytes held plus
        # these do: only then count header by header (the common small feed skips it).
        self._counting = self._pending + len(data) > MAX_HEAD_BYTES
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._dropped_upgrade:
                more = self._resume_plain(data[exc.args[0]:])  # may take back the End it reported
                return events + more
            self._upgraded = True
            events.append(Upgrade(data[exc.args[0]:]))
        except H1Error:
            self._failed = True
            raise
        except httptools.HttpParserCallbackError as exc:
            self._failed = True
            cause = exc.__context__
            if isinstance(cause, H1Error):
                raise cause from None
            raise H1Error(400, f"malformed message: {exc}") from None
        except httptools.HttpParserError as exc:
            self._failed = True
            raise H1Error(400, f"malformed message: {exc}") from None
        if self._in_head:
            # Still inside a head: count what llhttp is holding for us.
            self._pending += len(data)
            if self._pending > MAX_HEAD_BYTES:
                self._failed = True
                raise H1Error(431, "request header fields too large")
        return events

    def head_incomplete(self) -> bool:
        """True while a message head has begun and is not yet complete (the header-read timeout runs)."""
        return self._in_head

    def _resume_plain(self, tail: bytes) -> list:
        """Go on parsing as plain HTTP/1.1 after a request whose only Upgrade was dropped (h2c).

        llhttp stopped at that head as at any upgrade, taking its body for the
        new protocol's bytes and reporting the message complete.  When the head
        framed a body, a fresh parser is given a stand-in head with the same
        framing (never reported: :attr:`_synthetic`), so the body is read as
        this request's body and what follows as the next request.
        """
        self._dropped_upgrade = False
        self._parser = httptools.HttpRequestParser(self)
        events = self._events
        length, chunked = self._length, b"transfer-encoding" in self._hop
        if length is None and not chunked or length == b"0":
            return self.feed(tail) if tail else []
        if events and events[-1] is END:
            events.pop()  # the body is still to come: the message is not complete
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: " + (length or b"")
        self._synthetic = True
        return self.feed(b"POST / HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n\r\n" + tail)


class RequestReader(_Reader):
    """Parses requests from a client connection (pipelining included).

    *loop_markers*: the proxy's :class:`~meshctl_proxy.wire.loop_marker.LoopMarker`
    objects; a request carrying any of them in Via is refused with 508.
    """

    __slots__ = ()

    def __init__(self, loop_markers: tuple = ()) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._markers = loop_markers

    def on_headers_complete(self) -> None:
        p = self._parser
        self._in_head = False
        if self._synthetic:  # the stand-in head of _resume_plain: only its framing matters
            self._synthetic = False
            self._in_body = True
            return
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise H1Error(505 if version.startswith(("2", "3")) else 400, f"unsupported HTTP version {version}")
        method = p.get_method()
        if method == b"CONNECT":
            raise H1Error(501, "CONNECT is not supported")
        if self._via is not None and self._markers:
            for marker in self._markers:
                if marker.seen_in(self._via):
                    raise H1Error(LOOP_STATUS, LOOP_REASON)
        hop = self._hop
        headers = drop_connection_named(self._raw, hop) if hop else self._raw
        hosts = self._hosts
        if len(hosts) > 1:
            raise H1Error(400, "more than one Host header")
        if version == "1.1" and not hosts:
            raise H1Error(400, "missing Host header")
        host = hosts[0] if hosts else None
        content_length = int(self._length) if self._length is not None else None  # llhttp checked it
        chunked = b"transfer-encoding" in hop
        if chunked and version == "1.0":
            raise H1Error(400, "Transfer-Encoding in an HTTP/1.0 request")
        expect = self._expect is not None and self._expect.strip().lower() == b"100-continue"
        upgrade = None
        if p.should_upgrade():
            values = hop.get(b"upgrade")
            if not values or len(values) != 1:
                raise H1Error(400, "Connection: upgrade without exactly one Upgrade header")
            upgrade = values[0]
            if H2C in upgrade.lower():
                upgrade = without_h2c(upgrade)
                self._dropped_upgrade = upgrade is None
        self._in_body = True
        self._events.append(RequestHead(
            method, self._url, _VERSION_BYTES[version], headers, host, p.should_keep_alive(), content_length,
            chunked, expect, upgrade))

    def after_upgrade_refused(self, tail: bytes) -> list:
        """The upstream did not switch protocols: parse *tail* as the next request(s)."""
        self._parser = httptools.HttpRequestParser(self)
        self._upgraded = False
        return self.feed(tail) if tail else []


class ResponseReader(_Reader):
    """Parses responses from an upstream connection; call :meth:`expect` before each request."""

    __slots__ = ("_head_request", "no_reuse")
    _watched_lengths = _RESPONSE_WATCHED_LENGTHS

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = False
        self.no_reuse = False  # set when the connection cannot carry another exchange

    def expect(self, method: bytes) -> None:
        self._head_request = method == b"HEAD"

    def on_headers_complete(self) -> None:
        p = self._parser
        self._in_head = False
        status = p.get_status_code()
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise H1Error(502, f"upstream spoke HTTP/{version}")
        hop = self._hop
        headers = drop_connection_named(self._raw, hop) if hop else self._raw
        if 100 <= status < 200 and status != 101:
            self._events.append(Interim(status, headers))
            self._in_body = False
            return
        content_length = int(self._length) if self._length is not None else None
        chunked = b"transfer-encoding" in hop
        if chunked and version == "1.0":
            raise H1Error(502, "upstream sent Transfer-Encoding in HTTP/1.0")
        reason = self._url
        self._in_body = True
        keep_alive = p.should_keep_alive()
        self._events.append(ResponseHead(status, reason, _VERSION_BYTES[version], headers, keep_alive,
                                         content_length, chunked))
        if self._head_request:
            # RFC 9110 section 9.3.2: no body, whatever the framing headers say.  llhttp
            # cannot be told, so end the message here and never reuse the connection.
            self._events.append(END)
            self._in_body = False
            self.no_reuse = True
            self._failed = True  # anything after this is not trusted

    def on_message_complete(self) -> None:
        if self._head_request and self.no_reuse:
            return
        if not self._in_body:  # 1xx interim responses complete without a body
            return
        super().on_message_complete()

    @property
    def reading_body(self) -> bool:
        return self._in_body

    def feed(self, data: bytes) -> list:
        if self._failed and self.no_reuse and self._head_request:
            return []
        return super().feed(data)


# --- serialisation --------------------------------------------------------------

def _header_block(headers: Headers) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:  # one join over the pieces: cheaper than formatting each line
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def request_head(method: bytes, target: bytes, headers: Headers, *, chunked: bool) -> bytes:
    """An HTTP/1.1 request head; *headers* are end-to-end (Host and Content-Length included)."""
    te = b"transfer-encoding: chunked\r\n" if chunked else b""
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, target, _header_block(headers), te)


_REASONS = {100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
            404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            431: b"Request Header Fields Too Large", 508: b"Loop Detected",
            500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
            503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


def response_head(status: int, reason: bytes, headers: Headers, *, chunked: bool = False,
                  close: bool = False, extra: bytes = b"") -> bytes:
    if not reason:
        reason = _REASONS.get(status, b"")
    te = b"transfer-encoding: chunked\r\n" if chunked else b""
    conn = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\n%s%s%s%s\r\n" % (status, reason, _header_block(headers), te, conn, extra)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    return b"0\r\n%s\r\n" % _header_block(trailers) if trailers else b"0\r\n\r\n"


def error_response(status: int, reason: str) -> bytes:
    """A complete response for a request we refuse to parse; the connection closes after it."""
    body = (reason + "\n").encode()
    return response_head(status, b"", [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
                                       (b"meshctl-proxy-error", reason.encode())], close=True) + body
