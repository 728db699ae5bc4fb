"""HTTP/2 header blocks: the checks libnghttp2 leaves to the proxy, and what the proxy hands it to send, sans-IO.

libnghttp2 (through ngh2) validates every header block it receives against
RFC 9113 sections 8.2 and 8.3 before the proxy sees it: field names (no upper
case, no separators), values (no NUL, CR, LF, no surrounding SP or HTAB),
connection-specific fields, ``te`` other than ``trailers``, pseudo-headers
(unknown, duplicated, after a regular field, missing, empty ``:path``),
:status, trailers with pseudo-headers, a Content-Length the DATA does not
match.  A malformed block is a stream error of type PROTOCOL_ERROR
(section 8.1.1): libnghttp2 resets that stream and the connection goes on.

What it does not check, and the proxy does here:

- Inbound (:func:`request_fields`): a ``host`` that differs from
  ``:authority`` (section 8.3.1: they must agree, or an intermediary and the
  origin could route one request two ways); a ``via`` carrying one of the
  proxy's own marks (a forwarding loop, :mod:`meshctl_proxy.wire.loop_marker`).
- Outbound (:func:`h2_fields`): lower-case names, no connection-specific
  fields, never-indexed credentials.  libnghttp2 sends what it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ngh2 import NeverIndexedHeader

from meshctl_proxy.wire.loop_marker import LOOP_REASON, LoopMarker

Headers = list[tuple[bytes, bytes]]

# RFC 9113 section 8.2.2: connection-specific fields are malformed in HTTP/2;
# "te" is allowed only as "trailers".
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
# HPACK never-indexed (RFC 7541 section 7.1.3) for the fields most at risk from
# compression-ratio attacks, as nghttp2 and Firefox do.
SENSITIVE = frozenset((b"authorization", b"proxy-authorization"))


class MalformedHeaders(Exception):
    """A header block RFC 9113 calls malformed; the message names the field."""


class LoopDetected(MalformedHeaders):
    """The request carries one of the proxy's own Via marks: it has been round once already."""


def request_fields(headers: Sequence[tuple[bytes, bytes]], loop_markers: tuple[LoopMarker, ...] = ()
                   ) -> tuple[dict[bytes, bytes], Headers]:
    """The pseudo-header fields and the regular fields of a request block libnghttp2 has validated.

    libnghttp2 delivers pseudo-headers first (it refuses any after a regular
    field), so the regular fields are a slice.  MalformedHeaders when a Host
    field differs from :authority; LoopDetected when a Via field carries one
    of *loop_markers*.
    """
    pseudo: dict[bytes, bytes] = {}
    i = 0
    for name, value in headers:
        if name[:1] != b":":
            break
        pseudo[name] = value
        i += 1
    regular = list(headers[i:])  # Request.headers is a list: the proxy edits it (meshctl-client-id)
    authority = pseudo.get(b":authority")
    for name, value in regular:
        if name == b"host":
            if authority is not None and value != authority:
                raise MalformedHeaders(f"host {value!r} differs from :authority {authority!r}")
        elif name == b"via":
            for marker in loop_markers:
                if marker.seen_in((value,)):
                    raise LoopDetected(LOOP_REASON)
    return pseudo, regular


# Names seen to need nothing from h2_fields (lower case, not connection-specific, not te, not a
# credential, not host): most blocks are made of a few such names, repeated on every request, and a set
# lookup per field is what they then cost.  Bounded: a peer sending endless new names only misses it.
_PLAIN: set[bytes] = set()
_PLAIN_MAX = 1024
_NOT_PLAIN = CONNECTION_SPECIFIC | SENSITIVE | {b"te", b"cookie", b"host"}


def h2_fields(headers: Iterable[tuple[bytes, bytes]], *, skip: bytes = b"") -> Headers:
    """Regular fields ready for libnghttp2 to send.

    Lower-case names, no connection-specific fields, "te" only as
    "trailers", never-indexed for credentials.  Fields that arrived
    never-indexed keep that type, so the proxy preserves it as an
    intermediary must (RFC 7541 section 7.1.3).  *skip* drops one more field
    (the Host a request carries as :authority; it must be one of _NOT_PLAIN).
    """
    out: Headers = []
    plain = _PLAIN
    for field in headers:
        name = field[0]
        if name in plain:
            out.append(field)
            continue
        lower = name.lower()
        if lower in CONNECTION_SPECIFIC or lower == skip or lower[:1] == b":":
            continue
        if lower == b"te":
            if field[1].strip().lower() != b"trailers":
                continue
        elif lower in SENSITIVE or (lower == b"cookie" and len(field[1]) < 20):
            field = NeverIndexedHeader(lower, field[1])
        elif lower != name:
            field = NeverIndexedHeader(lower, field[1]) if type(field) is NeverIndexedHeader else (lower, field[1])
        elif name not in _NOT_PLAIN and len(plain) < _PLAIN_MAX:
            plain.add(name)
        out.append(field)
    return out
