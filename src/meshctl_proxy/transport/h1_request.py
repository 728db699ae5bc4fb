"""The request an HTTP/1.x client sent, as the proxy forwards it: one :class:`RequestMaker` per connection.

What changes on the way through, each with its rule:

- an absolute-form target (``GET http://host/path``) becomes origin form, and its
  authority wins over the Host header (RFC 9112 section 3.2.2);
- an HTTP/1.0 request without Host goes upstream as HTTP/1.1, which must carry one
  (RFC 9112 section 3.2): the address it was sent to, as hyper takes it from the URI;
- every request gains this proxy's ``Via`` entry, how a request that comes back to
  the proxy is recognised as a loop (:mod:`meshctl_proxy.wire.loop_marker`).

Hop-by-hop headers were already removed by the parser (:mod:`meshctl_proxy.wire.http1`).
"""

from __future__ import annotations

from meshctl_proxy.body import Body
from meshctl_proxy.model import ConnectionContext, Request
from meshctl_proxy.wire.http1 import RequestHead


def absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """RFC 9112 section 3.2.2: ``http://host/path`` -> (authority, path); None for any other form."""
    low = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if low.startswith(prefix):
            rest = target[len(prefix):]
            slash = rest.find(b"/")
            return (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    return None


class RequestMaker:
    """Makes the forwarded :class:`~meshctl_proxy.model.Request` of each request head of one connection."""

    __slots__ = ("ctx", "via", "_host_bytes", "_host")

    def __init__(self, ctx: ConnectionContext, via: tuple[bytes, bytes]) -> None:
        self.ctx = ctx
        self.via = via  # this proxy's ("via", entry) header
        self._host_bytes: bytes | None = None  # the last request's authority, and as str: usually the same
        self._host = ""

    def request(self, head: RequestHead, body: Body) -> Request:
        target = head.target
        authority = head.host
        headers = head.headers
        # Origin form ("/path") is the common case; only otherwise look for absolute form.
        absolute = None if target[:1] == b"/" else absolute_form(target)
        if absolute is not None:
            authority, target = absolute
            headers = [(k, authority if k.lower() == b"host" else v) for k, v in headers]
            if head.host is None:
                headers.append((b"host", authority))
        elif head.host is None and self.ctx.orig_dst is not None:
            headers.append((b"host", self.ctx.target_addr.encode()))
        headers.append(self.via)
        if authority != self._host_bytes:  # the same Host as the last request: reuse its str
            self._host_bytes = authority
            self._host = (authority or b"").decode("latin-1")
        return Request(head.method, target, self._host, headers, body, b"http", "http/1", self.ctx, None,
                       head.upgrade)
