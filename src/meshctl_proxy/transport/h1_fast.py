"""The HTTP/1 fast path: a bodiless request sent from the client's ``data_received``, answered from the upstream's.

No task, no coroutine and no extra pass of the event loop per request: the
client connection (:class:`~meshctl_proxy.transport.h1_server.H1ServerConnection`)
parses the head, the router's shortcut names the endpoint
(:meth:`~meshctl_proxy.transport.exchange.RequestPath.take_shortcut`), an idle
pooled connection (:class:`~meshctl_proxy.transport.h1_client.H1ClientConnection`)
sends it, and its callback hands the response back to be written.  That
saves two event-loop passes and a coroutine per request (docs/performance.md).

Once the shortcut is taken the exchange stays on this endpoint: with no idle
connection it connects (a task), a connect failure is answered with its
502/504, and a failure the exchange may replay (``exchange.replayable``: a
pooled connection the server had closed) goes to the exchange's one retry on a
fresh connection; the router is not asked again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshctl_proxy.model import Endpoint, ProxyError, Request, Response
from meshctl_proxy.transport.exchange import Exchange, replayable
from meshctl_proxy.wire.http1 import RequestHead

if TYPE_CHECKING:
    from meshctl_proxy.transport.h1_server import H1ServerConnection


class FastPath:
    """The fast exchange of one client connection, one at a time (the connection is EXCHANGING meanwhile).

    The request's fields are kept here, not in a per-request object: they are
    read again only by the callback of the same exchange.
    """

    __slots__ = ("conn", "path", "pool", "request", "head", "stats", "start", "endpoint")

    def __init__(self, conn: H1ServerConnection) -> None:
        self.conn = conn
        self.path = conn.path
        self.pool = conn.path.upstream.h1
        self.request: Request | None = None
        self.head: RequestHead | None = None
        self.stats = None  # the series the request counts in
        self.start = 0.0  # loop.time() when it arrived
        self.endpoint: Endpoint | None = None

    def send(self, request: Request, head: RequestHead, endpoint: Endpoint) -> None:
        """Send *request* (the shortcut named *endpoint*); the answer comes to the connection's ``respond``."""
        conn = self.conn
        path = self.path
        self.request = request
        self.head = head
        self.endpoint = endpoint
        self.start = start = conn.loop.time()
        self.stats = path.counted(request.authority, endpoint)
        if path.hooks.observers:
            try:
                conn.watched = path.announce(request, endpoint, start)
            except ProxyError as exc:
                conn.respond(request, head, exc.response(), self.stats, 0.0)
                return
        upstream = self.pool.take_idle(endpoint)
        if upstream is None:
            conn.stream_task = conn.loop.create_task(self._connect())
        else:
            upstream.start_exchange(request, self._done)

    def _done(self, response: Response | None, exc: BaseException | None) -> None:
        """The upstream's answer (or failure), called from its ``data_received`` or ``connection_lost``."""
        conn = self.conn
        latency = conn.loop.time() - self.start
        if conn.closed:
            return
        request = self.request
        if exc is not None:
            if replayable(request, exc):  # the pooled connection had been closed by the server
                conn.stream_task = conn.loop.create_task(self._resend())
                return
            response = exc.response() if isinstance(exc, ProxyError) else ProxyError(502, str(exc)).response()
        if self.path.observes:
            self.path.observe(request, self.endpoint, response, None, latency)
        conn.respond(request, self.head, response, self.stats, latency * 1000)

    async def _connect(self) -> None:
        """No idle pooled connection: a new one to the same endpoint."""
        try:
            upstream = await self.pool.connect(self.endpoint, self.request.authority)
        except ProxyError as exc:
            self._done(None, exc)
            return
        if self.conn.closed:
            upstream.transport.close()
            return
        upstream.start_exchange(self.request, self._done)

    async def _resend(self) -> None:
        """The exchange's one retry on a fresh connection; the hook has already run."""
        conn = self.conn
        request, start = self.request, self.start
        exchange = Exchange(self.path, request, start, watched=conn.watched, announced=True)
        response = await exchange.run(self.endpoint, resend=True)
        if conn.closed:
            response.body.discard()
            return
        conn.respond(request, self.head, response, self.stats, (conn.loop.time() - start) * 1000)
