"""Limits on floods that cost the server more than the client, sans-IO, each answered with ENHANCE_YOUR_CALM.

- Rapid reset (CVE-2023-44487): a client opens streams and resets them at
  once; each would cost us an upstream request while it costs the client two
  frames.  hyper/h2 (Linkerd's stack) bounds "pending accept reset streams":
  streams the remote reset before the server application accepted them.  We
  count the same ones, streams reset before the proxy took them on (their
  request not yet on its way upstream), per second.  A reset of a stream the
  proxy has taken on is a cancellation (a gRPC client ending a call it has had
  answers on, or a shared deadline passing) and is not counted: counting every
  RST_STREAM ended whole connections of legitimate gRPC clients.  Such a reset
  cancels the upstream stream at once, and libnghttp2's own token bucket over
  every client RST_STREAM(CANCEL) stays as a backstop far above this limit (it
  would close with INTERNAL_ERROR).
- PING and SETTINGS floods (CVE-2019-9512, CVE-2019-9515): each one makes us
  queue an ACK.  libnghttp2 only bounds the ACKs queued unsent (a client that
  never reads); a client that reads and floods costs us CPU all the same.
- Streams beyond our advertised SETTINGS_MAX_CONCURRENT_STREAMS
  (CVE-2019-9518-like abuse): libnghttp2 detects it and ends the connection;
  h2_server sends ENHANCE_YOUR_CALM in place of its PROTOCOL_ERROR.

Every breach is answered with GOAWAY(ENHANCE_YOUR_CALM), as Go's and
Envoy's servers do, and the connection is closed.
"""

from __future__ import annotations

import dataclasses

# Per connection, per second.  A healthy client practically never resets a stream
# before the proxy has taken it on (microseconds after sending it), and pings a
# few times a minute (keepalive); these limits are far above that and far below
# what an attacker needs.
MAX_RESETS_PER_SECOND = 200
MAX_PINGS_PER_SECOND = 50
MAX_SETTINGS_PER_SECOND = 50


@dataclasses.dataclass(slots=True)
class _Window:
    limit: int
    start: float = 0.0
    count: int = 0

    def hit(self, now: float) -> bool:
        """Count one event; True when the limit for the current one-second window is passed."""
        if now - self.start >= 1.0:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class FloodGuard:
    """Per-connection counters; each method returns the reason to GOAWAY, or None."""

    __slots__ = ("resets", "pings", "settings")

    def __init__(self, *, max_resets: int = MAX_RESETS_PER_SECOND, max_pings: int = MAX_PINGS_PER_SECOND,
                 max_settings: int = MAX_SETTINGS_PER_SECOND) -> None:
        self.resets = _Window(max_resets)
        self.pings = _Window(max_pings)
        self.settings = _Window(max_settings)

    def on_reset(self, now: float) -> str | None:
        return "too many stream resets (rapid reset)" if self.resets.hit(now) else None

    def on_ping(self, now: float) -> str | None:
        return "too many PINGs" if self.pings.hit(now) else None

    def on_settings(self, now: float) -> str | None:
        return "too many SETTINGS" if self.settings.hit(now) else None
