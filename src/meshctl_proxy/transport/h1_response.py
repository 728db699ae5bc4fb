"""Writing a response to an HTTP/1.x client, framed as its request allows, and recording it.

:func:`write_response` writes a response whose body has already arrived in
one write (each write is a syscall, the largest single cost per request on
loopback), else the head and then the body as it comes, pausing while the
client's socket is full (a task); either way it counts the response in its
series, ends the hook's watches of the request and tells the connection.
:func:`framing` decides keep-alive, body or none, and chunking from the
request head and the response (RFC 9112 sections 6 and 9.3).
:func:`close_lingering` ends a connection after a refusal without letting a
reset destroy it.  The connection
(:class:`~meshctl_proxy.transport.h1_server.H1ServerConnection`, a
:class:`ResponseSink`) decides when a response is written and what its phase is.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshctl_proxy.body import BodyError
from meshctl_proxy.hooks import Watched
from meshctl_proxy.model import Request, Response
from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import RequestHead

# Streamed body bytes gathered before a write: fewer syscalls for a body arriving in small reads.
STREAM_WRITE_SIZE = 65536
# After refusing a request whose client may still be sending: how long to keep reading (and dropping)
# before the close, so the refusal is not destroyed by a reset (RFC 9112 section 9.6; nginx's lingering_close).
LINGER_SECONDS = 2.0


class ResponseSink(Protocol):
    """The connection a response is written to: its held writes, flow control and the request's watches."""

    write_paused: bool
    keep_alive: bool  # False once no further request may start: the response says close
    watched: Watched | None  # the hook's watches of the request in flight (meshctl_proxy.hooks)
    loop: asyncio.AbstractEventLoop
    stream_task: asyncio.Task | None  # the task writing a streamed response

    def _write(self, data: bytes) -> None: ...

    def _abort(self) -> None: ...

    async def drained(self) -> None: ...

    def watch_end(self, response: Response | None, *, error: str | None = None, status: int | None = None) -> None: ...

    def response_written(self, request: Request, keep: bool) -> None: ...


def write_response(conn: ResponseSink, request: Request, head: RequestHead, response: Response, stats,
                   latency_ms: float) -> None:
    """Write *response* to *request*, count it, then tell the connection (``response_written``).

    A body already here goes out with the head in one write, from this call;
    otherwise a task (``conn.stream_task``) writes the body as it arrives.
    """
    keep, no_body, chunked = framing(head, response, conn.keep_alive)
    body = response.body
    if not no_body and not body.complete:
        conn.stream_task = conn.loop.create_task(_respond_streaming(conn, request, head, response, stats, latency_ms))
        return
    out = http1.response_head(response.status, response.reason, response.headers, chunked=chunked,
                              close=not keep)
    if not no_body:
        data = body.read_nowait()
        if data:
            out += http1.chunk(data) if chunked else data
        if chunked:
            out += http1.last_chunk(body.trailers)
    conn._write(out)
    stats.record(response, latency_ms)
    if conn.watched is not None:
        conn.watch_end(response)
    conn.response_written(request, keep)


async def _respond_streaming(conn: ResponseSink, request: Request, head: RequestHead, response: Response, stats,
                             latency_ms: float) -> None:
    if conn.watched is not None:
        conn.watched.response(response.status, conn.loop.time())
    try:
        keep = await stream_response(conn, head, response, conn.keep_alive)
    except BodyError:
        # The upstream failed mid-body: HTTP/1 can only say so by cutting the connection.
        stats.response(response.status, "failure", latency_ms)
        conn.watch_end(response, error="upstream failed mid-body")
        conn._abort()
        keep = False
    except ConnectionError:  # the client is gone
        keep = False
    else:
        stats.record(response, latency_ms)
        conn.watch_end(response)
    conn.response_written(request, keep)


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
