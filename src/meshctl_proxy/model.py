"""What flows through the proxy: connections, requests, responses, endpoints.

These are the nouns the seams speak (see docs/proxy.md, "Seams"): a router
turns a :class:`Request` into a :class:`Response` by picking an
:class:`Endpoint` and calling ``upstream.send``; a connector makes the
connection to an endpoint; the :class:`ConnectionContext` carries what the
accepted connection knows about itself (direction, original destination,
TLS and the peer's identity) into metrics and policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from meshctl_proxy.body import EMPTY, Body
from meshctl_proxy.wire.fields import Headers, find_header

__all__ = ["Headers", "find_header"]  # defined with the wire code (sans-IO), used here too

INBOUND = "inbound"
OUTBOUND = "outbound"


@dataclasses.dataclass(slots=True)
class ConnectionContext:
    """One accepted connection, as the rest of the proxy sees it.

    Mutable on purpose: the TLS seam fills ``tls`` and ``peer_identity`` after
    the handshake, protocol detection fills ``protocol``.
    """

    direction: str  # "inbound" or "outbound"
    client_addr: tuple[str, int]
    local_addr: tuple[str, int]
    orig_dst: tuple[str, int] | None  # None: not redirected (ingress mode, see router)
    tls: str = "no_identity"  # Linkerd's label values: "true" when mTLS, else "no_identity"
    peer_identity: str | None = None
    protocol: str = "unknown"  # "http/1", "h2" or "tcp" once detected

    @property
    def target_addr(self) -> str | None:
        return f"{self.orig_dst[0]}:{self.orig_dst[1]}" if self.orig_dst else None


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect: an address and, for mTLS, the identity it must present."""

    host: str
    port: int
    identity: str | None = None
    # The destination service's labels for it (pod, namespace, owner...): outbound metrics carry
    # them as dst_<name>, as Linkerd's do.  Not part of the endpoint's identity for pools.
    labels: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)
    # Endpoints key the connection pools and balancers, looked up twice per request:
    # hashing once here instead of per lookup saves a tuple and a Python call each time.
    _hash: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.identity)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What the client asked for: the logical destination of a request or connection."""

    direction: str
    authority: str | None  # Host / :authority (HTTP) or None (opaque TCP)
    orig_dst: tuple[str, int] | None
    protocol: str  # "http/1", "h2" or "tcp"


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one exchange with an endpoint (for balancers and breakers)."""

    status: int | None  # HTTP status; None for TCP or when no response came
    latency: float  # seconds until the response head (or the failure)
    error: str | None = None  # the proxy error reason, when the exchange failed


@dataclasses.dataclass(slots=True)
class Request:
    """An HTTP request on its way upstream (HTTP/1.1 or HTTP/2).

    ``headers`` hold end-to-end headers only (hop-by-hop ones were removed on
    the way in); HTTP/2 pseudo-headers are carried as fields, not headers.
    """

    method: bytes
    target: bytes  # origin-form path and query
    authority: str
    headers: Headers
    body: Body = EMPTY
    scheme: bytes = b"http"
    protocol: str = "http/1"  # "http/1" or "h2": upstream speaks the same
    context: ConnectionContext | None = None
    # HTTP/1 only: relays 1xx interim responses (100 Continue) to the client.
    interim: Callable[[int, Headers], None] | None = None
    upgrade: bytes | None = None  # HTTP/1 Upgrade header when the client asked to switch protocols
    route: str | None = None  # the ServiceProfile route it matched (set by the traffic router), for the hook
    # Inbound: where its response is counted in the route_* metrics (policy.inbound_routes.RouteTally,
    # set by the router's commit() or dispatch(); the exchange records a shortcut's response there).
    route_stats: Any = None

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)

    def replace(self, **changes) -> "Request":
        """A copy with *changes* (a retry gets a fresh body each attempt)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(slots=True)
class Response:
    """An HTTP response on its way back to the client."""

    status: int
    headers: Headers
    body: Body = EMPTY
    reason: bytes = b""
    endpoint: Endpoint | None = None  # who answered (None for proxy-generated responses)
    error: str | None = None  # proxy error reason (also in the meshctl-proxy-error header)
    # HTTP/1 upgrade: the upstream transport, handed to the tunnel after 101.
    upgraded: object | None = None

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)

    def grpc_status(self) -> bytes | None:
        """grpc-status from the headers (a Trailers-Only response) or else the trailers, for classification."""
        status = find_header(self.headers, b"grpc-status")
        if status is None and self.body.trailers:
            status = find_header(self.body.trailers, b"grpc-status")
        return status


ERROR_HEADER = b"meshctl-proxy-error"  # as Linkerd's l5d-proxy-error


class ProxyError(Exception):
    """The proxy could not get a response: becomes a 502/503/504 with ERROR_HEADER.

    502 the upstream failed (refused, reset, malformed), 503 nothing to send to
    (no endpoint, shutting down), 504 it took too long (connect or response timeout).

    ``unprocessed``: the upstream did none of the request (a reused HTTP/1
    connection closed before any response byte, an HTTP/2 REFUSED_STREAM),
    so it may be sent again (:func:`meshctl_proxy.transport.exchange.replayable`).
    """

    unprocessed = False

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    def response(self) -> Response:
        text = (self.reason + "\n").encode()
        return Response(self.status, [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode()),
                                      (ERROR_HEADER, self.reason.encode())],
                        Body.of(text), error=self.reason)


class RequestRefused(ProxyError):
    """A request refused before it was sent (by a per-request observer or policy): no endpoint's fault, never retried."""
