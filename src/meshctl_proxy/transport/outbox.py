"""Writes held to the end of an event loop's pass and sent together, for HTTP/1 and HTTP/2 alike.

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

HTTP/1 hands the outbox bytes for a transport (``write``); HTTP/2 hands it a
flusher (``flush_later``), which asks libnghttp2 for everything it queued on
its connection when it runs, so the frames of every stream of the pass share
one write.

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

# MEASUREMENT ONLY (issue 12): True holds a pass's first output too; False sends it at once
# (HTTP/1: the write itself; HTTP/2: at the end of the callback that made it, ``callback_done``).
HOLD_FIRST = False

_IDLE, _FIRST, _HOLDING = 0, 1, 2


class Outbox:
    """One event loop's held writes; :func:`outbox` gives the running loop's."""

    __slots__ = ("_loop", "_held", "_first", "_state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list = []  # (transport, bytes) from HTTP/1, (flusher, None) from HTTP/2, in order
        self._first: list = []
        self._state = _IDLE

    def _begin(self, state: int) -> None:
        self._state = state
        # call_soon from an I/O callback runs after every other callback of this
        # poll, before the loop polls again: the end of the pass.
        self._loop.call_soon(self._end_pass)

    def write(self, transport, data: bytes) -> None:
        """HTTP/1: *data* for *transport*."""
        if self._state == _IDLE:
            if not HOLD_FIRST:
                self._begin(_HOLDING)
                transport.write(data)
                return
            self._begin(_HOLDING)
        self._held.append((transport, data))

    def flush_later(self, flusher: Callable[[], None]) -> None:
        """HTTP/2: call *flusher* when this pass's output goes (once per request of it is enough)."""
        state = self._state
        if state == _IDLE:
            if HOLD_FIRST:
                self._begin(_HOLDING)
                self._held.append((flusher, None))
                return
            self._begin(_FIRST)
            self._first.append(flusher)
        elif state == _FIRST:
            self._first.append(flusher)
        else:
            self._held.append((flusher, None))

    def callback_done(self) -> None:
        """The callback that began the pass is done: what it produced goes now."""
        if self._state == _FIRST:
            self._state = _HOLDING
            first, self._first = self._first, []
            for flusher in first:
                flusher()

    def _end_pass(self) -> None:
        self._state = _IDLE
        self.flush()

    def flush(self) -> None:
        """Send everything held, in order (also before a close, so nothing overtakes it)."""
        if self._first:
            first, self._first = self._first, []
            for flusher in first:
                flusher()
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
