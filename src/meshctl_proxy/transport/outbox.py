"""Every write of an event loop's pass held to the end of the pass and sent together, for HTTP/1 and HTTP/2.

On loopback a write is the dearest thing a proxy does per request: the
kernel runs the receiving side of TCP in the writer's context and wakes the
reader (wrk, nginx, the app), and on a VM waking a sleeping process on an
idle CPU costs more than the rest of the write.  perf under wrk put 5.6 us
per request of meshctl-proxy's kernel time in those wake-ups against 1.6 us
for HAProxy, which also finishes a pass over its ready events before it
sends.  Written as each event is handled, the first write of a pass wakes
nginx, nginx answers and sleeps again, and the next write wakes it again;
written together at the end of the pass, one wake-up finds every request of
the pass waiting (docs/performance.md, "HTTP/1.1, second pass").

One policy for both protocols (issue 12): HTTP/1 hands the outbox bytes for
a transport (``write``); HTTP/2 hands it a flusher (``flush_later``) that
asks libnghttp2 for everything queued on its connection when it runs, so the
frames of every stream answered in the pass share one write.  Nothing goes
out before the pass ends, not even its first write: sending that one at once
(HTTP/1's earlier rule) measured no better at 1,000 req/s, for either
protocol, and no better in throughput (docs/performance.md, "Issue 12: one
write-batching policy"), so the simpler rule stayed.

The order of the bytes on each transport is kept (one list, in order), and
whoever closes, aborts or hands over a transport flushes first (``flush()``),
so nothing written before a close goes after it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

log = logging.getLogger("meshctl_proxy.transport.outbox")

_BY_LOOP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Outbox:
    """One event loop's held writes; :func:`outbox` gives the running loop's."""

    __slots__ = ("_loop", "_held", "_pass_open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # In order: (transport, bytes) from HTTP/1, (flusher, None) from HTTP/2.
        self._held: list[tuple] = []
        self._pass_open = False

    def write(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        """HTTP/1: *data* for *transport*, at the end of the pass."""
        if not self._pass_open:
            self._open_pass()
        self._held.append((transport, data))

    def flush_later(self, flusher: Callable[[], None]) -> None:
        """HTTP/2: call *flusher* at the end of the pass (a connection hands it over once per pass)."""
        if not self._pass_open:
            self._open_pass()
        self._held.append((flusher, None))

    def _open_pass(self) -> None:
        self._pass_open = True
        # call_soon from an I/O callback runs after every other callback of this
        # poll, before the loop polls again: the end of the pass.
        self._loop.call_soon(self._end_pass)

    def _end_pass(self) -> None:
        self._pass_open = False
        self.flush()

    def flush(self) -> None:
        """Send everything held, in order (also before a close, so nothing overtakes it)."""
        held = self._held
        if held:
            self._held = []
            for target, data in held:
                try:
                    if data is None:
                        target()
                    else:
                        target.write(data)
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
