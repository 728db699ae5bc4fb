"""What every HTTP connection of the proxy does the same way: wait for its socket to drain.

asyncio calls ``pause_writing`` when a transport's write buffer passes its
high-water mark and ``resume_writing`` when it falls below the low one.  A
connection that relays a body must then stop handing the transport more
until it is told to go on, and several tasks may be waiting at once (one per
HTTP/2 stream; on HTTP/1 the response relay and the upstream request body).
Each waiter gets its own future and ``resume_writing`` wakes them all: a
single slot kept only the last waiter and left the others stopped mid-body
for good (issue 13, class 11).  Written once here for the HTTP/1 server and
client connections and both HTTP/2 ends.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """Write backpressure for an ``asyncio.Protocol``: ``await self.drained()`` after a write while paused."""

    write_paused: bool
    drain_waiters: list[asyncio.Future]

    def __init__(self) -> None:
        self.write_paused = False
        self.drain_waiters = []

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drained(self) -> None:
        """Return once the transport takes writes again (at once when it does now).

        Cancellation-safe: a waiter that is cancelled (its stream reset, its
        task stopped) leaves no slot behind.
        """
        if not self.write_paused:
            return
        fut = asyncio.get_running_loop().create_future()
        self.drain_waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self.drain_waiters:
                self.drain_waiters.remove(fut)
            raise

    def fail_drain_waiters(self, exc: BaseException) -> None:
        """The connection is gone: every waiter raises *exc*."""
        waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
