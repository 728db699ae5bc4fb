"""The HTTP/1 general path: the requests of one client connection that the fast path did not take.

A request with a body, one that asks to upgrade or expects 100-continue, one
pipelined behind another, or one the router's shortcut does not name an
endpoint for is queued by the connection
(:class:`~meshctl_proxy.transport.h1_server.H1ServerConnection`); one task
per connection takes them in order, one at a time, through the exchange
(:meth:`~meshctl_proxy.transport.exchange.Exchange.run`: shortcut or
dispatch, the hook once, errors as responses) and has the connection write
each answer.  The task waits while an answer is still being written (by
either path), so that pipelined requests keep their order.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshctl_proxy.body import BodyError
from meshctl_proxy.model import ProxyError, Request
from meshctl_proxy.transport.exchange import Exchange
from meshctl_proxy.wire.http1 import RequestHead

if TYPE_CHECKING:
    from meshctl_proxy.transport.h1_server import H1ServerConnection


class GeneralPath:
    """The task that serves a client connection's queued requests, for the connection's life."""

    __slots__ = ("conn", "task", "_wakeup")

    def __init__(self, conn: H1ServerConnection) -> None:
        self.conn = conn
        self.task: asyncio.Task | None = None
        self._wakeup: asyncio.Future | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self._serve())

    def wake(self) -> None:
        """A request was queued, or the connection's state changed: look again."""
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _serve(self) -> None:
        conn = self.conn
        try:
            while True:
                queued = conn.next_request()
                if queued is not None:
                    await self._exchange(*queued)  # answered, or being answered (conn.respond)
                elif conn.expects_more():
                    self._wakeup = conn.loop.create_future()  # a request, or a fast exchange, to finish
                    await self._wakeup
                    self._wakeup = None
                else:
                    return
        except asyncio.CancelledError:
            pass
        except ConnectionError:
            if conn.transport is not None:
                conn._abort()

    async def _exchange(self, request: Request, head: RequestHead) -> None:
        """One request through the exchange; the connection writes the answer."""
        conn = self.conn
        loop = conn.loop
        path = conn.path
        # Outbound series are labelled by the endpoint's hop, known once the exchange has answered.
        stats = None if path.outbound else path.counted(request.authority)
        start = loop.time()
        exchange = Exchange(path, request, start)
        try:
            response = await exchange.run()
        except BodyError:
            conn.watched = exchange.watched
            refusal = conn.refusal
            if refusal is not None:  # the body failed because the rest of the stream was refused
                if stats is None:
                    stats = path.counted(request.authority)
                stats.response(refusal.status, "failure", (loop.time() - start) * 1000)
                conn.respond_refusal()
                return
            response = ProxyError(502, "request body failed").response()
        conn.watched = exchange.watched
        latency_ms = (loop.time() - start) * 1000
        if stats is None:
            stats = path.counted(request.authority, response.endpoint)
        if response.status == 101 and response.upgraded is not None:
            stats.response(101, "success", latency_ms)
            conn.start_tunnel(response)
            return
        conn.respond(request, head, response, stats, latency_ms)
