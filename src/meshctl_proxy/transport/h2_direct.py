"""The HTTP/2 direct path: a bodiless request sent upstream and answered from callbacks, no task.

When the router's shortcut names the endpoint (meshctl_proxy.transport.exchange)
and a pooled upstream connection has room for a stream, the request goes out
from the callback that read it and the response is written from the upstream
connection's callback.  A task per stream, its chain of coroutines and a future
per response were a tenth of the CPU per request.  Whatever this path cannot
finish it hands to the general path (``ServerStream.serve``) with what it knows
(the endpoint, the series counted), so the router is never asked twice about
one request.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ngh2 import NGH2Error

from meshctl_proxy.model import Endpoint, ProxyError, Response
from meshctl_proxy.transport.exchange import replayable
from meshctl_proxy.transport.h2_connection import UpstreamReset

if TYPE_CHECKING:
    from meshctl_proxy.transport.h2_server import H2ServerConnection
    from meshctl_proxy.transport.h2_stream import ServerStream


class DirectPath:
    """The direct path of one server connection."""

    __slots__ = ("server", "path", "upstream", "loop")

    def __init__(self, server: H2ServerConnection) -> None:
        self.server = server
        self.path = server.path
        self.upstream = server.path.upstream
        self.loop = server.loop

    def start(self, st: ServerStream) -> bool:
        """Take *st* on: True when this path (or the general one with the shortcut's endpoint) has it,
        False when the router has no shortcut and the general path must handle it from the start."""
        path = self.path
        request = st.request
        endpoint = path.take_shortcut(request)
        if endpoint is None:
            return False
        stats = path.counted(request.authority, endpoint)
        start = self.loop.time()
        if path.hooks.observers:
            try:
                st.watched = path.announce(request, endpoint, start)
            except ProxyError as exc:
                self._answer(st, stats, exc.response(), None, 0.0, start)
                return True
        pool = self.upstream.h2
        conn = pool.usable(endpoint) if pool is not None else None
        usid = conn.start(request, partial(self._done, st, endpoint, stats, start)) if conn is not None else None
        if usid is None:  # no stream room: the general path sends it to the same endpoint
            st.serve_soon(stats=stats, start=start, endpoint=endpoint)
        else:
            st.upstream = (conn, usid)
        st.taken = True
        return True

    def _done(self, st: ServerStream, endpoint: Endpoint, stats, start: float, response: Response | None,
              exc: Exception | None) -> None:
        st.upstream = None
        latency = self.loop.time() - start
        if exc is not None and replayable(st.request, exc):
            # Nothing was processed: the general path sends it again, once (the exchange's retry).
            server = self.server
            if not server.closed and st.id in server.streams:
                st.serve_soon(stats=stats, start=start, endpoint=endpoint, resend=True)
            return
        if self.path.observes:
            self.path.observe(st.request, endpoint, response, exc, latency)
        self._answer(st, stats, response, exc, latency, start)

    def _answer(self, st: ServerStream, stats, response: Response | None, exc: Exception | None,
                latency: float, start: float) -> None:
        server = self.server
        sid = st.id
        if server.closed or sid not in server.streams:
            if response is not None:
                response.body.discard()  # nobody will relay it: its upstream credit goes back
            st.watch_end(None, "client went away")
            return
        if isinstance(exc, UpstreamReset):
            stats.response(502, "failure", latency * 1000)
            st.watch_end(None, exc.reason)
            server.reset(sid, exc.code)
            server.end(sid)
            return
        if exc is not None:
            response = exc.response() if isinstance(exc, ProxyError) else ProxyError(
                502, f"proxy error: {type(exc).__name__}").response()
        if st.watched is not None:
            st.watched.response(response.status, self.loop.time())
        try:
            answered = st.respond_now(response)
        except NGH2Error:
            response.body.discard()
            st.watch_end(response, "stream closed")
            server.end(sid)
            return
        if answered:
            stats.record(response, latency * 1000)
            if st.watched is not None:
                st.watch_end(response)
            server.end(sid)
        else:  # a body still to come, or beyond the peer's window: relay it in a task
            st.serve_soon(stats=stats, start=start, response=response, latency_ms=latency * 1000)
