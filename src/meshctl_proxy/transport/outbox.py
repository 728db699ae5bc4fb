"""Writes after the first of an event loop's pass, held to the end of the pass and sent together.

On loopback a write is the dearest thing a proxy does per request: the
kernel runs the receiving side of TCP in the writer's context and wakes the
reader (wrk, nginx, the app), and on a VM waking a sleeping process on an
idle CPU costs more than the rest of the write.  perf under wrk put 5.6 us
per request of meshctl-proxy's kernel time in those wake-ups against 1.6 us
for HAProxy, which also finishes a pass over its ready events before it
sends.  Written as each event is handled, the first write of a pass wakes
nginx, nginx answers and sleeps again, and the next write wakes it again;
written together at the end of the pass, one wake-up finds every request of
the pass waiting (docs/performance.md, "HTTP/1.1, second pass").  The first
write of a pass still goes at once (see :class:`Outbox`).

The order of the bytes on each transport is kept (one list, in order), and
whoever closes, aborts or hands over a transport flushes first (``flush()``),
so nothing written before a close goes after it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

log = logging.getLogger("meshctl_proxy.transport.outbox")

_BY_LOOP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Outbox:
    """One event loop's held writes; :func:`outbox` gives the running loop's.

    The first write of a pass goes out at once, so a lone request (the common
    case below saturation) waits for nothing; the writes after it in the same
    pass are held to its end.  Holding the first as well measured +0.03 ms at
    the median and twice the p99 through two proxies at 1,000 req/s
    (docs/performance.md).
    """

    __slots__ = ("_loop", "_held", "_in_pass")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list = []
        self._in_pass = False

    def write(self, transport, data: bytes) -> None:
        if self._in_pass:
            self._held.append((transport, data))
            return
        self._in_pass = True
        # call_soon from an I/O callback runs after every other callback of this
        # poll, before the loop polls again: the end of the pass.
        self._loop.call_soon(self._end_pass)
        transport.write(data)

    def _end_pass(self) -> None:
        self._in_pass = False
        self.flush()

    def flush(self) -> None:
        """Send everything held, in order (also before a close, so nothing overtakes it)."""
        held = self._held
        if held:
            self._held = []
            for transport, data in held:
                try:
                    transport.write(data)
                except (RuntimeError, ConnectionError) as exc:
                    # Closed meanwhile by someone who did not flush (the pools at shutdown): the
                    # peer is gone or going, as it would be for a write made after the close.
                    log.debug("held write dropped: %s", exc)
                except Exception:  # one broken transport must not cost the others their bytes
                    log.exception("held write failed")


def outbox(loop: asyncio.AbstractEventLoop) -> Outbox:
    box = _BY_LOOP.get(loop)
    if box is None:
        box = _BY_LOOP[loop] = Outbox(loop)
    return box
