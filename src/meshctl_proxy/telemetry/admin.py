"""The admin listener: ``/metrics``, ``/ready``, ``/live`` and ``/shutdown``.

As linkerd2-proxy's admin server: ``/ready`` is 200 once the listeners are
up and 503 while draining; ``/live`` is 200 while the process runs;
``POST /shutdown`` starts a graceful shutdown, only when
``MESHCTL_PROXY_SHUTDOWN_ENDPOINT_ENABLED`` is set and only from loopback
(a pod's neighbours must not be able to stop it).
"""

from __future__ import annotations

import asyncio
import ipaddress

from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import End, H1Error, RequestHead


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AdminProtocol(asyncio.Protocol):
    def __init__(self, proxy) -> None:
        self.proxy = proxy
        # A request one of the proxy's own listeners forwarded here carries its Via mark: refused (508),
        # so the admin endpoints answer only what reached the admin listener itself (docs/security.md, 4).
        self.reader = http1.RequestReader(tuple(getattr(proxy, "loop_markers", {}).values()))
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.head: RequestHead | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = (transport.get_extra_info("peername") or ("", 0))[0]
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.reader.feed(data)
        except H1Error as exc:
            self._refuse(exc)
            return
        if self.reader.head_incomplete():
            if self.head_timer is None:  # the same header-read timeout as the data listeners (class 5)
                self.head_timer = asyncio.get_running_loop().call_later(
                    self.proxy.config.header_read_timeout, self._refuse, H1Error(408, "request head not received in time"))
        elif self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        for ev in events:
            if type(ev) is RequestHead:
                self.head = ev
            elif type(ev) is End and self.head is not None:
                head, self.head = self.head, None
                self.respond(head)

    def _refuse(self, exc: H1Error) -> None:
        self.transport.write(http1.error_response(exc.status, exc.reason))
        self.transport.close()

    def respond(self, head: RequestHead) -> None:
        status, ctype, body = self.route(head.method, head.target.split(b"?", 1)[0])
        close = not head.keep_alive or head.version != b"1.1"
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
        self.transport.write(http1.response_head(status, b"", headers, close=close)
                             + (b"" if head.method == b"HEAD" else body))
        if close:
            self.transport.close()

    def route(self, method: bytes, path: bytes) -> tuple[int, bytes, bytes]:
        proxy = self.proxy
        text = b"text/plain; charset=utf-8"
        if path == b"/metrics" and method in (b"GET", b"HEAD"):
            return 200, b"text/plain; version=0.0.4; charset=utf-8", proxy.metrics.render()
        if path == b"/ready" and method in (b"GET", b"HEAD"):
            return (200, text, b"ready\n") if proxy.is_ready() else (503, text, b"not ready\n")
        extra = proxy.admin_routes.get(path)
        if extra is not None and method in (b"GET", b"HEAD"):
            return extra()
        if path == b"/live" and method in (b"GET", b"HEAD"):
            return 200, text, b"live\n"
        if path == b"/shutdown":
            if not proxy.config.shutdown_endpoint_enabled:
                return 404, text, b"shutdown endpoint is disabled\n"
            if not is_loopback(self.peer):
                return 403, text, b"shutdown is only accepted from localhost\n"
            if method != b"POST":
                return 405, text, b"use POST\n"
            proxy.begin_shutdown()
            return 200, text, b"shutdown\n"
        return 404, text, b"not found\n"
