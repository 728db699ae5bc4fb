"""Tap: live per-request events for an operator, served on the control listener (Linkerd's 4190).

A subscriber sends one request and reads events until it hangs up
(docs/proxy.md, "Tap", has the whole protocol)::

    POST /tap HTTP/1.1
    content-type: application/json

    {"direction": "inbound", "method": "GET", "authority": "web-svc.shop.svc.cluster.local:80",
     "path": "/api/", "dst": ["10.0.0.7:4143"], "max_rps": 100, "header_names": false}

and is answered ``200`` with ``content-type: application/x-ndjson`` and a
chunked body of JSON lines: a ``hello`` naming this proxy, then per tapped
request a ``req``, a ``rsp`` (response head) and an ``end`` event, tied by
``id``.  Headers and bodies are never sent, as in Linkerd; ``header_names``
asks for the request's header *names* on ``req``.

The rules, each from Linkerd's tap:

- **Who may subscribe.**  With identity enabled the control listener speaks
  mTLS only and accepts one client identity, the tap service's
  (``MESHCTL_PROXY_TAP_SVC_NAME``; linkerd2-proxy's
  ``LINKERD2_PROXY_TAP_SVC_NAME``), its certificate verified against the
  mesh's trust anchors.  Without identity Linkerd disables tap altogether;
  we serve it to loopback peers only, so a developer's own machine can tap.
- **No subscriber, no cost.**  The hub is an ``ExchangeObserver`` that sits
  in the proxy's observer list only while someone subscribes; the request
  path then pays nothing for tap (benches/bench_tap.py).
- **A slow subscriber never slows traffic.**  Events are encoded on the
  request path and handed to the subscriber's bounded queue, written out
  once per event-loop pass; while the socket pushes back (asyncio's
  ``pause_writing``) they wait there, and once ``QUEUE_CAPACITY`` wait,
  further events are dropped and counted (``tap_events_dropped_total``).
- **``max_rps``** (linkerd viz tap ``--max-rps``, default 100) bounds the
  requests tapped per second per subscriber, with a token bucket: a request
  over the rate is not tapped at all (no orphan ``rsp``/``end``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from meshctl_proxy.wire import http1
from meshctl_proxy.telemetry.admin import is_loopback
from meshctl_proxy.wire.http1 import End, H1Error, RequestHead

log = logging.getLogger("meshctl_proxy.tap")

TAP_PATH = b"/tap"
CONTENT_TYPE = b"application/x-ndjson"
# Events a subscriber may have waiting while its socket pushes back; beyond, dropped and counted.
# 10,000 lines are ~3 MB, a few seconds of a busy proxy at max_rps 1000.
QUEUE_CAPACITY = 10_000
# linkerd viz tap's --max-rps default, and a ceiling so one subscriber cannot ask for everything.
DEFAULT_MAX_RPS = 100.0
MAX_MAX_RPS = 100_000.0
MAX_FILTER_BYTES = 16 * 1024
HANDSHAKE_TIMEOUT = 10.0
SUBSCRIBERS_LIMIT = 100  # concurrent subscriptions per proxy; more are answered 503

DIRECTIONS = ("inbound", "outbound")


class FilterError(ValueError):
    """A subscription filter we cannot use; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class TapFilter:
    """What one subscriber wants to see.  Empty fields match everything."""

    direction: str | None = None
    method: str | None = None
    authority: str | None = None
    path_prefix: str | None = None
    dst: frozenset[str] = frozenset()  # "host:port" of the chosen endpoint (linkerd viz tap --to)
    max_rps: float = DEFAULT_MAX_RPS
    header_names: bool = False

    @classmethod
    def from_json(cls, raw: bytes) -> "TapFilter":
        if len(raw) > MAX_FILTER_BYTES:
            raise FilterError(f"filter: larger than {MAX_FILTER_BYTES} bytes")
        try:
            doc = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise FilterError(f"filter: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise FilterError("filter: expected a JSON object")
        known = {"direction", "method", "authority", "path", "dst", "max_rps", "header_names"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise FilterError(f"filter.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")

        def text(name: str) -> str | None:
            value = doc.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise FilterError(f"filter.{name}: expected a string, got {value!r}")
            return value

        direction = text("direction")
        if direction is not None and direction not in DIRECTIONS:
            raise FilterError(f"filter.direction: expected inbound or outbound, got {direction!r}")
        method = text("method")
        path = text("path")
        if path is not None and not path.startswith("/"):
            raise FilterError(f"filter.path: a path prefix starts with '/', got {path!r}")
        dst = doc.get("dst") or []
        if not isinstance(dst, list) or not all(isinstance(d, str) and d for d in dst):
            raise FilterError(f"filter.dst: expected a list of HOST:PORT strings, got {dst!r}")
        max_rps = doc.get("max_rps", DEFAULT_MAX_RPS)
        if isinstance(max_rps, bool) or not isinstance(max_rps, (int, float)) or not 0 < max_rps <= MAX_MAX_RPS:
            raise FilterError(f"filter.max_rps: expected a number in (0, {MAX_MAX_RPS:.0f}], got {max_rps!r}")
        header_names = doc.get("header_names", False)
        if not isinstance(header_names, bool):
            raise FilterError(f"filter.header_names: expected true or false, got {header_names!r}")
        return cls(direction=direction, method=method.upper() if method else None, authority=text("authority"),
                   path_prefix=path, dst=frozenset(dst), max_rps=float(max_rps), header_names=header_names)

    def matches(self, meta) -> bool:
        if self.direction is not None and meta.direction != self.direction:
            return False
        if self.method is not None and meta.method != self.method:
            return False
        if self.authority is not None and meta.authority != self.authority:
            return False
        if self.path_prefix is not None and not meta.path.startswith(self.path_prefix):
            return False
        if self.dst and (meta.dst is None or _addr(meta.dst) not in self.dst):
            return False
        return True


def _addr(pair) -> str:
    host, port = pair[0], pair[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TokenBucket:
    """At most *rate* admissions per second on average, bursts up to *rate* (at least 1)."""

    __slots__ = ("rate", "capacity", "tokens", "stamp", "clock")

    def __init__(self, rate: float, *, clock=time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def admit(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# --- events ---------------------------------------------------------------------

# One encoder for every event: json.dumps with non-default separators builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False).encode


def _line(doc: dict) -> bytes:
    return _encode(doc).encode() + b"\n"


def request_event(meta, *, header_names: bool) -> bytes:
    doc = {"event": "req", "id": meta.id, "direction": meta.direction, "protocol": meta.protocol,
           "src": _addr(meta.src), "dst": _addr(meta.dst) if meta.dst else None, "tls": bool(meta.tls),
           "client_id": meta.client_id, "server_id": meta.server_id, "method": meta.method,
           "scheme": meta.scheme, "authority": meta.authority, "path": meta.path, "route": meta.route,
           "ts": round(time.time(), 6)}
    if header_names:
        doc["header_names"] = list(meta.header_names)
    return _line(doc)


# --- subscribers ------------------------------------------------------------------------

class Subscriber:
    """One subscription's sink: a bounded queue in front of a chunked HTTP/1.1 response body."""

    def __init__(self, hub: "TapHub", transport, tap_filter: TapFilter, peer: str, *,
                 capacity: int | None = None, clock=time.monotonic) -> None:
        self.hub = hub
        self.transport = transport
        self.filter = tap_filter
        self.peer = peer
        self.bucket = TokenBucket(tap_filter.max_rps, clock=clock)
        self.capacity = QUEUE_CAPACITY if capacity is None else capacity
        self.pending: list[bytes] = []
        self.paused = False
        self.flush_scheduled = False
        self.closed = False
        self.sent = 0
        self.dropped = 0

    def emit(self, line: bytes) -> None:
        if self.closed:
            return
        if len(self.pending) >= self.capacity:
            self.dropped += 1
            self.hub.dropped += 1
            return
        self.pending.append(line)
        if not self.flush_scheduled and not self.paused:
            # One write per loop pass, not per event: the request path only appends.
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or self.paused or not self.pending:
            return
        data, self.pending = b"".join(self.pending), []
        self.sent += data.count(b"\n")
        self.transport.write(http1.chunk(data))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()

    def finish(self) -> None:
        """End the stream politely (the proxy is shutting down): what is queued, then the last chunk."""
        if self.closed:
            return
        self.paused = False
        self.flush()
        self.closed = True
        self.transport.write(http1.last_chunk(None))
        self.transport.close()


# uvloop's loop.time() (libuv's uv_now) moves in whole milliseconds and only once per loop pass,
# and it is the hook's clock: its latencies of fast requests read 0 or 1 ms.  A watch also times
# the request itself from on_request (the endpoint chosen, usually microseconds after arrival) with
# perf_counter, and keeps the hook's figure only when it is clearly longer, i.e. when the request
# waited before its endpoint was chosen (discovery, a full balancer queue).
HOOK_CLOCK_GRAIN_S = 0.002


def _finer(hook_s: float, own_s: float) -> float:
    return hook_s if hook_s - own_s > HOOK_CLOCK_GRAIN_S else own_s


class _Watch:
    """The ``ExchangeWatch`` of one tapped request: its events go to the subscribers that took its ``req``."""

    __slots__ = ("id", "subscribers", "t0")

    def __init__(self, request_id: int, subscribers: list[Subscriber]) -> None:
        self.id = request_id
        self.subscribers = subscribers
        self.t0 = time.perf_counter()

    def on_response(self, status: int, latency_s: float) -> None:
        latency_s = _finer(latency_s, time.perf_counter() - self.t0)
        line = _line({"event": "rsp", "id": self.id, "status": status, "latency_ms": round(latency_s * 1000, 3)})
        for sub in self.subscribers:
            sub.emit(line)

    def on_end(self, *, grpc_status: int | None, error: str | None, duration_s: float, response_bytes: int) -> None:
        duration_s = _finer(duration_s, time.perf_counter() - self.t0)
        line = _line({"event": "end", "id": self.id, "grpc_status": grpc_status, "error": error,
                      "duration_ms": round(duration_s * 1000, 3), "response_bytes": response_bytes})
        for sub in self.subscribers:
            sub.emit(line)


class TapHub:
    """The proxy's tap: its subscribers, and the ``ExchangeObserver`` it is while it has any.

    *observers* is the proxy's observer list (contract A of the request path):
    the hub adds itself with its first subscriber and removes itself with its
    last, so that without a subscriber the request path never calls it.
    """

    def __init__(self, observers: list, *, proxy_info: dict | None = None) -> None:
        self.observers = observers
        self.proxy_info = proxy_info or {}
        self.subscribers: list[Subscriber] = []
        self.subscriptions_total = 0
        self.refused: dict[str, int] = {}
        self.tapped = 0  # requests whose req event went to at least one subscriber
        self.dropped = 0

    # -- ExchangeObserver ---------------------------------------------------------
    def on_request(self, meta):
        interested = None
        for sub in self.subscribers:
            if sub.filter.matches(meta) and sub.bucket.admit():
                if interested is None:
                    interested = [sub]
                else:
                    interested.append(sub)
        if interested is None:
            return None
        self.tapped += 1
        plain = full = None
        for sub in interested:
            if sub.filter.header_names:
                full = full or request_event(meta, header_names=True)
                sub.emit(full)
            else:
                plain = plain or request_event(meta, header_names=False)
                sub.emit(plain)
        return _Watch(meta.id, interested)

    # -- subscriptions ------------------------------------------------------------
    def subscribe(self, transport, tap_filter: TapFilter, peer: str) -> Subscriber:
        sub = Subscriber(self, transport, tap_filter, peer)
        self.subscribers.append(sub)
        self.subscriptions_total += 1
        if self not in self.observers:
            self.observers.append(self)
        sub.emit(_line({"event": "hello", **self.proxy_info, "filter": _filter_doc(tap_filter)}))
        log.info("tap: %s subscribed (%d now)", peer, len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        if sub in self.subscribers:
            self.subscribers.remove(sub)
            log.info("tap: %s left (%d sent, %d dropped)", sub.peer, sub.sent, sub.dropped)
        if not self.subscribers and self in self.observers:
            self.observers.remove(self)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def close_all(self) -> None:
        for sub in list(self.subscribers):
            sub.finish()
            self.unsubscribe(sub)

    def render_metrics(self) -> str:
        out = ["# HELP tap_subscribers Tap subscriptions open now.\n# TYPE tap_subscribers gauge\n",
               f"tap_subscribers {len(self.subscribers)}\n",
               "# HELP tap_subscriptions_total Tap subscriptions accepted.\n# TYPE tap_subscriptions_total counter\n",
               f"tap_subscriptions_total {self.subscriptions_total}\n",
               "# HELP tap_subscriptions_refused_total Tap subscriptions refused, by reason.\n"
               "# TYPE tap_subscriptions_refused_total counter\n"]
        for reason, n in sorted(self.refused.items()):
            out.append(f'tap_subscriptions_refused_total{{reason="{reason}"}} {n}\n')
        out += ["# HELP tap_requests_total Requests reported to at least one tap subscriber.\n"
                "# TYPE tap_requests_total counter\n", f"tap_requests_total {self.tapped}\n",
                "# HELP tap_events_dropped_total Tap events dropped because a subscriber's queue was full.\n"
                "# TYPE tap_events_dropped_total counter\n", f"tap_events_dropped_total {self.dropped}\n"]
        return "".join(out)


def _filter_doc(f: TapFilter) -> dict:
    return {"direction": f.direction, "method": f.method, "authority": f.authority, "path": f.path_prefix,
            "dst": sorted(f.dst), "max_rps": f.max_rps, "header_names": f.header_names}


# --- the control listener ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class TapAccess:
    """Who may subscribe: the tap service's identity over mTLS, or (identity disabled) loopback peers."""

    identity_required: bool
    tap_identity: str

    def check(self, *, peer_host: str, client_identity: str | None, tls: bool) -> str | None:
        """None when allowed, else the reason (one line, sent back to the caller)."""
        if not self.identity_required:
            if is_loopback(peer_host):
                return None
            return f"tap without identity is served to loopback peers only, not {peer_host}"
        if not tls:
            return "tap requires mTLS with the tap service's identity (identity is enabled)"
        if not self.tap_identity:
            return "tap is disabled: MESHCTL_PROXY_TAP_SVC_NAME is empty"
        if client_identity != self.tap_identity:
            return f"client identity {client_identity or '(none)'} is not the tap service's {self.tap_identity}"
        return None


class ControlProtocol(asyncio.Protocol):
    """An accepted control connection: TLS (when identity is on) is terminated, then :class:`TapHttp` serves it."""

    def __init__(self, server: "TapServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = (transport.get_extra_info("peername") or ("", 0))[0]
        if not self.server.access.identity_required:
            self._serve(transport, client_identity=None, tls=False, connection_made=False)

    def data_received(self, data: bytes) -> None:
        # Only reached with identity on: the first bytes say whether this is TLS.
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if data[:1] == b"\x16":
            transport.pause_reading()
            self.server.spawn(self._terminate(transport, data))
            return
        http = self._serve(transport, client_identity=None, tls=False, connection_made=False)
        http.data_received(data)

    def _serve(self, transport, *, client_identity, tls: bool, connection_made: bool = True) -> "TapHttp":
        http = TapHttp(self.server, self.peer, client_identity=client_identity, tls=tls)
        if connection_made:
            transport.start(http)
        else:
            transport.set_protocol(http)
            http.connection_made(transport)
        return http

    async def _terminate(self, transport, initial: bytes) -> None:
        from meshctl_proxy.identity import tls_contexts as mesh_tls
        from meshctl_proxy.identity.tls_transport import TlsTransport

        creds = self.server.server_identity.current() if self.server.server_identity is not None else None
        if creds is None:
            self.server.hub.refuse("no_certificate")
            transport.abort()
            return
        tls_transport = TlsTransport(creds.server_context, server_side=True, raw=transport)
        transport.resume_reading()
        try:
            sslobj = await tls_transport.handshake(initial, timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.server.hub.refuse("tls_handshake")
            log.info("tap: TLS from %s refused: %s", self.peer, exc)
            return
        self._serve(tls_transport, client_identity=mesh_tls.peer_identity(sslobj), tls=True)


class TapHttp(asyncio.Protocol):
    """HTTP/1.1 on the control listener: ``POST /tap`` subscribes; anything else is answered and closed."""

    def __init__(self, server: "TapServer", peer: str, *, client_identity: str | None, tls: bool) -> None:
        self.server = server
        self.peer = peer
        self.client_identity = client_identity
        self.tls = tls
        self.reader = http1.RequestReader()
        self.transport: asyncio.Transport | None = None
        self.head: RequestHead | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.subscriber: Subscriber | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.subscriber is not None or self.transport is None:
            return  # a subscriber only listens; what it sends after the filter is ignored
        try:
            events = self.reader.feed(data)
        except H1Error as exc:
            self.transport.write(http1.error_response(exc.status, exc.reason))
            self.transport.close()
            self.transport = None
            return
        for ev in events:
            if type(ev) is RequestHead:
                self.head = ev
            elif type(ev) is bytes:
                self.body_size += len(ev)
                if self.body_size > MAX_FILTER_BYTES:
                    self._answer(413, f"filter: larger than {MAX_FILTER_BYTES} bytes", "bad_filter")
                    return
                self.body.append(ev)
            elif type(ev) is End and self.head is not None:
                self._request(self.head, b"".join(self.body))
                return

    def _answer(self, status: int, message: str, reason: str | None = None) -> None:
        if reason:
            self.server.hub.refuse(reason)
        body = (message + "\n").encode()
        self.transport.write(http1.response_head(status, b"", [(b"content-type", b"text/plain; charset=utf-8"),
                                                               (b"content-length", b"%d" % len(body))], close=True)
                             + body)
        self.transport.close()
        self.transport = None

    def _request(self, head: RequestHead, body: bytes) -> None:
        server = self.server
        denied = server.access.check(peer_host=self.peer, client_identity=self.client_identity, tls=self.tls)
        if denied is not None:
            log.info("tap: %s refused: %s", self.peer, denied)
            self._answer(403, denied, "forbidden")
            return
        if head.target.split(b"?", 1)[0] != TAP_PATH:
            self._answer(404, "not found: POST /tap subscribes (docs/proxy.md, Tap)")
            return
        if head.method != b"POST":
            self._answer(405, "use POST /tap with a JSON filter")
            return
        if server.draining:
            self._answer(503, "the proxy is shutting down", "shutting_down")
            return
        if len(server.hub.subscribers) >= SUBSCRIBERS_LIMIT:
            self._answer(503, f"too many tap subscribers (limit {SUBSCRIBERS_LIMIT})", "too_many")
            return
        try:
            tap_filter = TapFilter.from_json(body)
        except FilterError as exc:
            self._answer(400, str(exc), "bad_filter")
            return
        self.transport.write(http1.response_head(200, b"", [(b"content-type", CONTENT_TYPE),
                                                            (b"cache-control", b"no-store")], chunked=True))
        who = self.client_identity or self.peer
        self.subscriber = server.hub.subscribe(self.transport, tap_filter, who)

    def pause_writing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.pause_writing()

    def resume_writing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.resume_writing()

    def eof_received(self) -> bool:
        return False  # the subscriber hung up: close, and connection_lost unsubscribes

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.subscriber is not None:
            self.server.hub.unsubscribe(self.subscriber)
            self.subscriber = None


class TapServer:
    """The control listener's state: the hub, who may subscribe, and the proxy's identity for mTLS."""

    def __init__(self, hub: TapHub, access: TapAccess, *, spawn) -> None:
        self.hub = hub
        self.access = access
        self.spawn = spawn
        self.server_identity = None  # the proxy's IdentityManager, attached by meshctl_proxy.mtls.Mesh
        self.draining = False

    def protocol(self) -> ControlProtocol:
        return ControlProtocol(self)

    def shutdown(self) -> None:
        self.draining = True
        self.hub.close_all()
