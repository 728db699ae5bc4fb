"""One stream of a client's HTTP/2 connection: the request forwarded, its exchange, the response relayed.

``RequestMaker`` turns a HEADERS event into the forwarded request (one per
connection, as ``h1_request.RequestMaker`` for HTTP/1).  ``ServerStream.serve``
is the general path: the exchange (meshctl_proxy.transport.exchange) in a task,
then the response relayed within the client's windows.  The direct path
(meshctl_proxy.transport.h2_direct) answers without a task when it can, and
hands over to ``serve`` when it cannot.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from ngh2 import NGH2Error

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.hooks import Watched
from meshctl_proxy.model import ConnectionContext, Endpoint, Request, Response
from meshctl_proxy.transport.exchange import Exchange, end_watch
from meshctl_proxy.transport.h2_connection import INTERNAL_ERROR, NO_ERROR, STREAM_WINDOW, StreamReset, UpstreamReset
from meshctl_proxy.wire.h2headers import h2_fields, request_fields
from meshctl_proxy.wire.loop_marker import LoopMarker

if TYPE_CHECKING:
    from meshctl_proxy.transport.h2_client import H2ClientConnection
    from meshctl_proxy.transport.h2_server import H2ServerConnection

_STATUS = {code: b"%d" % code for code in range(100, 600)}
# A response body this small that is all here goes to libnghttp2 whatever the windows (respond_now).
SMALL_BODY = 16 * 1024


class RequestMaker:
    """Makes the forwarded :class:`~meshctl_proxy.model.Request` of each HEADERS a client sends on one connection."""

    __slots__ = ("ctx", "markers", "via", "_authority")

    def __init__(self, ctx: ConnectionContext, marker: LoopMarker) -> None:
        self.ctx = ctx
        self.markers = (marker,)
        self.via = (b"via", marker.entry("h2"))  # added to every request forwarded (wire.loop_marker)
        self._authority = (b"", "")  # the last :authority and its str: clients repeat it on every stream

    def request(self, ev, ack) -> Request | None:
        """The request of the HEADERS event *ev*; None for a method not offered (CONNECT).  A body gives
        its flow-control credit back through ``ack(stream_id, n)`` as it is read.  Raises
        MalformedHeaders (RFC 9113 section 8.1.1) or LoopDetected (wire.loop_marker)."""
        pseudo, headers = request_fields(ev.headers, self.markers)
        method = pseudo[b":method"]
        if method == b"CONNECT":  # not offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL either)
            return None
        authority = pseudo.get(b":authority")
        if authority is None:  # libnghttp2 lets a request carry Host instead
            authority = next((v for k, v in headers if k == b"host"), b"")
        cached = self._authority
        if authority == cached[0]:
            host = cached[1]
        else:
            host = authority.decode("latin-1")
            self._authority = (authority, host)
        if ev.end_stream:
            body = EMPTY
        else:
            length = next((v for k, v in headers if k == b"content-length"), None)
            body = Body(int(length) if length and length.isdigit() else None,
                        on_consumed=partial(ack, ev.stream_id), high_water=STREAM_WINDOW)
        headers.append(self.via)  # request_fields() made a list of its own
        return Request(method, pseudo[b":path"], host, headers, body, pseudo[b":scheme"], "h2", self.ctx)


class ServerStream:
    """A client's stream while the proxy serves it (libnghttp2 keeps its protocol state, RFC 9113 section 5.1)."""

    __slots__ = ("server", "id", "request", "body", "task", "upstream", "taken", "watched")

    def __init__(self, server: H2ServerConnection, stream_id: int, request: Request) -> None:
        self.server = server
        self.id = stream_id
        self.request = request
        self.body = request.body
        self.task: asyncio.Task | None = None
        # The proxy has taken the stream on (its request is on its way upstream): a client's reset
        # from then on is a cancellation, not a rapid reset (h2limits, hyper's "pending accept").
        self.taken = False
        # Direct path: (upstream connection, its stream id) while the response is awaited.
        self.upstream: tuple[H2ClientConnection, int] | None = None
        self.watched: Watched | None = None  # the hook's watches of this request (meshctl_proxy.hooks)

    def cancel(self, reason: str) -> None:
        """The client's stream is gone: stop serving it, and cancel the upstream stream too (RFC 9113 section 8.7)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream is not None:
            conn, sid = self.upstream
            self.upstream = None
            conn.cancel(sid)
        self.watch_end(None, reason)

    def watch_end(self, response: Response | None, error: str | None = None) -> None:
        """The request is over (answered, failed or abandoned): its watches end, once."""
        watched = self.watched
        if watched is None:
            return
        self.watched = None
        end_watch(watched, self.server.loop.time(), response, error)

    def serve_soon(self, **handover) -> None:
        """The general path, in a task (*handover*: see ``serve``)."""
        self.task = self.server.loop.create_task(self.serve(**handover))

    def respond_now(self, response: Response) -> bool:
        """Write the response head, and the body too when it is all here and fits the peer's windows.

        True: the stream is answered.  False: the body still has to be relayed (send_body).
        """
        server = self.server
        sid = self.id
        body = response.body
        conn = server.conn
        status = response.status
        headers = h2_fields(response.headers)
        headers.insert(0, (b":status", _STATUS.get(status) or b"%d" % status))
        empty = body is EMPTY or (body.done and not body.trailers and body.complete and body.length == 0)
        conn.send_response(sid, headers, end_stream=empty)
        if not server.flush_scheduled:
            server.flush_soon()
        if empty:
            return True
        # A small body that is all here goes to libnghttp2 whatever the windows: it sends only within them
        # and holds the rest, at most SMALL_BODY per stream, which spares three window look-ups per request.
        if (not body.complete or server.write_paused
                or (body.buffered > SMALL_BODY and body.buffered > server.window(sid))):
            return False
        data = body.read_nowait()
        if data:
            conn.send_data(sid, data, end_stream=not body.trailers)
            server.pending += len(data)
            if body.trailers:
                server.end_body(sid, body)
        else:
            server.end_body(sid, body)
        return True

    async def serve(self, *, stats=None, start: float = 0.0, endpoint: Endpoint | None = None,
                    response: Response | None = None, latency_ms: float = 0.0, resend: bool = False) -> None:
        """The general path: the exchange (meshctl_proxy.transport.exchange), then relay the response.

        The direct path hands over here with *stats* already counted and the *endpoint* its shortcut
        chose (no stream room, or with *resend* a refused stream to send again), or with the *response*
        whose body is still to be relayed.
        """
        server = self.server
        loop = server.loop
        request = self.request
        path = server.path
        self.taken = True
        if stats is None:
            start = loop.time()
            # Outbound requests count in their endpoint's hop series, known once the exchange answers.
            if not path.outbound:
                stats = path.counted(request.authority)
        sid = self.id
        status = response.status if response is not None else 0
        completed = False
        error = None
        try:
            if response is None:
                exchange = Exchange(path, request, start, watched=self.watched, announced=endpoint is not None)
                try:
                    response = await exchange.run(endpoint, resend=resend)
                except UpstreamReset as exc:
                    self.watched = exchange.watched
                    error = exc.reason
                    (stats or path.counted(request.authority)).response(502, "failure", (loop.time() - start) * 1000)
                    server.reset(sid, exc.code)
                    return
                except BodyError:
                    self.watched = exchange.watched
                    error = "client reset the stream"
                    return
                finally:
                    self.watched = exchange.watched
                latency_ms = (loop.time() - start) * 1000
                status = response.status
                if stats is None:
                    stats = path.counted(request.authority, response.endpoint)
                if server.closed or sid not in server.streams:
                    error = "client went away"
                    return
                if self.watched is not None:
                    self.watched.response(status, loop.time())
                if self.respond_now(response):
                    stats.record(response, latency_ms)
                    completed = True
                    return
            await server.send_body(sid, response.body)
            stats.record(response, latency_ms)
            completed = True
        except StreamReset as exc:  # the upstream reset mid-response: pass the code on
            error = "upstream reset the stream"
            (stats or path.counted(request.authority)).response(status or 502, "failure", (loop.time() - start) * 1000)
            server.reset(sid, exc.code)
        except BodyError:
            error = "upstream failed mid-body"
            (stats or path.counted(request.authority)).response(status or 502, "failure", (loop.time() - start) * 1000)
            server.reset(sid, INTERNAL_ERROR)
        except (asyncio.CancelledError, ConnectionError, NGH2Error):
            error = "stream abandoned"
        finally:
            server.streams.pop(sid, None)  # first: a close while releasing must not cancel this task
            self._release(response, completed)
            self.watch_end(response, None if completed else error or "stream abandoned")
            server.end(sid)

    def _release(self, response: Response | None, completed: bool) -> None:
        """The exchange is over: whatever of its bodies nobody will read gives its credit back.

        A complete response to a request still being sent ends the request too: RST_STREAM(NO_ERROR),
        as RFC 9113 section 8.1 lets a server ask, so the client stops sending what nobody reads.
        """
        if response is not None and not completed:
            response.body.discard()  # its upstream's credit (the stream is abandoned mid-response)
        body = self.body
        if not body.done:
            server = self.server
            if completed and not body.complete and not server.closed:
                # libnghttp2 sends RST_STREAM ahead of queued DATA: only once the response is all out.
                server.flush()
                try:
                    sent = not server.conn.queued_body_size(self.id)
                except NGH2Error:
                    sent = False
                if sent:
                    server.reset(self.id, NO_ERROR)
            body.discard()
