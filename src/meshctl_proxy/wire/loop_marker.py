"""The proxy's Via entry: it marks what it forwards and refuses what it marked, sans-IO.

RFC 9110 section 7.6.3: a proxy adds a ``Via`` entry to each request it
forwards, and the field is how forwarding loops are detected.  Canonical
address comparison (:mod:`meshctl_proxy.wire.addresses`) stops requests
addressed to the proxy's own listeners; this stops anything that slips past
it (a name that resolves to the pod itself, a NAT, a second hop).

One marker per proxy *and direction*: a pod calling its own Service may be
balanced to itself, so a request marked by the outbound side reaching the
inbound side is a legitimate hairpin, not a loop; the same side seeing its
own mark again is.  The received-by part is a pseudonym (RFC 9110 allows
one), random per process, so it tells the upstream nothing about the pod.
The protocol part is ``1.1`` or ``2`` as received, as the RFC asks; what
identifies the proxy is the pseudonym alone.
"""

from __future__ import annotations

import dataclasses
import secrets

VIA = b"via"
LOOP_STATUS = 508  # Loop Detected (RFC 5842 section 7.2), as Cloudflare answers forwarding loops
LOOP_REASON = "request loop detected: this proxy already forwarded it (Via)"


@dataclasses.dataclass(frozen=True, slots=True)
class LoopMarker:
    pseudonym: bytes  # the received-by token, e.g. b"meshctl-3f9a2c1d-out"

    @classmethod
    def new(cls, direction: str) -> "LoopMarker":
        return cls(b"meshctl-%s-%s" % (secrets.token_hex(4).encode(), direction[:3].encode()))

    def entry(self, protocol: str) -> bytes:
        """The Via value this proxy adds for a request received over *protocol* (``http/1`` or ``h2``)."""
        return (b"2 " if protocol == "h2" else b"1.1 ") + self.pseudonym

    def seen_in(self, via_values) -> bool:
        """True when any of the Via field values names this marker as received-by."""
        pseudonym = self.pseudonym
        for value in via_values:
            if pseudonym in value:  # cheap test first; then parse the list properly
                for entry in value.split(b","):
                    parts = entry.split()
                    if len(parts) >= 2 and parts[1].lower() == pseudonym:
                        return True
        return False
