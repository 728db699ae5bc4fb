"""Writing a response to an HTTP/1.x client: framed as the client's request allows, in one write if it can.

:func:`framing` decides keep-alive, body or none, and chunking from the
request head and the response (RFC 9112 sections 6 and 9.3);
:func:`whole_response` gives the bytes of a response whose body has already
arrived, so that it goes out in one write (each write is a syscall, the
largest single cost per request on loopback); :func:`stream_response` writes
the head and then the body as it comes, pausing while the client's socket is
full; :func:`close_lingering` ends a connection after a refusal without
letting a reset destroy it.  The connection (:class:`~meshctl_proxy.transport.h1_server.H1ServerConnection`)
counts and reports the response; this module only frames and writes it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshctl_proxy.model import Response
from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import RequestHead

# Streamed body bytes gathered before a write: fewer syscalls for a body arriving in small reads.
STREAM_WRITE_SIZE = 65536
# After refusing a request whose client may still be sending: how long to keep reading (and dropping)
# before the close, so the refusal is not destroyed by a reset (RFC 9112 section 9.6; nginx's lingering_close).
LINGER_SECONDS = 2.0


class ResponseSink(Protocol):
    """What :func:`stream_response` writes through: the connection's held writes and its flow control."""

    write_paused: bool

    def _write(self, data: bytes) -> None: ...

    async def drained(self) -> None: ...


def framing(head: RequestHead, response: Response, keep_alive: bool) -> tuple[bool, bool, bool]:
    """(keep-alive, no body, chunked) for *response* to the request *head*; *keep_alive*: the connection's."""
    keep = head.keep_alive and head.version == b"1.1" and keep_alive
    status = response.status
    no_body = head.method == b"HEAD" or status in (204, 304) or status < 200
    chunked = False
    if not no_body and response.body.length is None:
        if head.version == b"1.1":
            chunked = True
        else:
            keep = False  # HTTP/1.0 client: the body ends when we close
    return keep, no_body, chunked


def whole_response(head: RequestHead, response: Response, keep_alive: bool) -> tuple[bytes, bool] | None:
    """(the response's bytes, keep-alive) when its body is already here; None when it must stream."""
    keep, no_body, chunked = framing(head, response, keep_alive)
    body = response.body
    if not no_body and not body.complete:
        return None
    out = http1.response_head(response.status, response.reason, response.headers, chunked=chunked,
                              close=not keep)
    if not no_body:
        data = body.read_nowait()
        if data:
            out += http1.chunk(data) if chunked else data
        if chunked:
            out += http1.last_chunk(body.trailers)
    return out, keep


async def stream_response(conn: ResponseSink, head: RequestHead, response: Response, keep_alive: bool) -> bool:
    """Write *response* as its body arrives; keep-alive.  Raises BodyError when the upstream fails mid-body."""
    keep, no_body, chunked = framing(head, response, keep_alive)
    body = response.body
    out = http1.response_head(response.status, response.reason, response.headers, chunked=chunked,
                              close=not keep)
    while True:
        data = body.read_nowait()
        if data is None:
            if out:
                conn._write(out)
                out = b""
            if conn.write_paused:
                await conn.drained()
            data = await body.read()
        if not data:
            break
        out += http1.chunk(data) if chunked else data
        if len(out) >= STREAM_WRITE_SIZE:
            conn._write(out)
            out = b""
            if conn.write_paused:
                await conn.drained()
    if chunked:
        out += http1.last_chunk(body.trailers)
    if out:
        conn._write(out)
    return keep


def close_lingering(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Close after a refusal: half-close now, keep reading (the connection drops what comes) until the
    client's EOF or LINGER_SECONDS.  Closed at once, a socket with unread input answers with a reset that
    can destroy the refusal before the client reads it (RFC 9112 section 9.6).  The caller flushes first."""
    if transport.is_closing():
        return
    if not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    transport.resume_reading()
    loop.call_later(LINGER_SECONDS, _linger_over, transport)


def _linger_over(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.close()
