"""HTTP/2 header blocks: what the proxy accepts from the network and what it hands to h2 to send, sans-IO.

h2 can validate header blocks itself, but it does so through a chain of ten
generators per field, in both directions, and that was about a fifth of the
proxy's CPU per HTTP/2 request.  The proxy turns both off
(``http2_proxy._config``) and does the same checks here, in one pass:

- Inbound (:func:`check_request`, :func:`check_response`,
  :func:`check_trailers`): every rule of RFC 9113 sections 8.2 and 8.3 that
  h2's inbound validation enforces.  A malformed block is a stream error of
  type PROTOCOL_ERROR (section 8.1.1), so one bad request does not take down
  the other streams of a shared connection, as nghttp2 and Go do.
- Outbound (:func:`h2_fields`): lower-case names, no connection-specific
  fields, never-indexed credentials.  Everything sent was checked on its way
  in, or is the proxy's own.

HPACK's own limits (SETTINGS_MAX_HEADER_LIST_SIZE, table sizes) stay with
hpack, and h2 still refuses a bad content-length.
"""

from __future__ import annotations

import re

from hpack import HeaderTuple, NeverIndexedHeaderTuple

Headers = list[tuple[bytes, bytes]]

# RFC 9113 section 8.2.2: connection-specific fields are malformed in HTTP/2;
# "te" is allowed only as "trailers".
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
# HPACK never-indexed (RFC 7541 section 7.1.3) for the fields most at risk from
# compression-ratio attacks, as h2's outbound normalisation, nghttp2 and Firefox do.
SENSITIVE = frozenset((b"authorization", b"proxy-authorization"))
# RFC 9113 section 8.3.1.  Not :protocol: it exists only for extended CONNECT
# (RFC 8441), which the proxy does not offer (it refuses CONNECT).
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
RESPONSE_PSEUDO = frozenset((b":status",))
NO_PSEUDO: frozenset[bytes] = frozenset()

# RFC 9113 section 8.2.1: a field name is 0x21-0x7e without upper case and without
# ':' (pseudo-header names are checked against the sets above instead).
_NAME = re.compile(rb"[!-9;-@\[-~]+")
# A value holds no NUL, CR or LF, and neither starts nor ends with SP or HTAB.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_STATUS = re.compile(rb"[1-9][0-9][0-9]")


class MalformedHeaders(Exception):
    """A header block RFC 9113 calls malformed; the message names the field."""


def _scan(headers, allowed: frozenset[bytes], kind: str) -> tuple[dict[bytes, bytes], bytes | None]:
    """The pseudo-header fields of *headers* and its Host, after checking every field."""
    pseudo: dict[bytes, bytes] = {}
    host = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise MalformedHeaders(f"pseudo-header {name!r} after a regular field")
            if name not in allowed:
                raise MalformedHeaders(f"pseudo-header {name!r} not allowed in {kind}")
            if name in pseudo:
                raise MalformedHeaders(f"duplicate pseudo-header {name!r}")
            pseudo[name] = value
        else:
            regular = True
            if _NAME.fullmatch(name) is None:
                raise MalformedHeaders(f"invalid field name {name!r}")
            if name in CONNECTION_SPECIFIC:
                raise MalformedHeaders(f"connection-specific field {name!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise MalformedHeaders(f"te other than trailers: {value!r}")
            if name == b"host":
                if host is not None:
                    raise MalformedHeaders("more than one host field")
                host = value
        if value and _BAD_VALUE.search(value) is not None:
            raise MalformedHeaders(f"invalid value in field {name!r}")
    return pseudo, host


def check_request(headers) -> dict[bytes, bytes]:
    """The pseudo-header fields of a request block; MalformedHeaders when RFC 9113 says it is malformed."""
    pseudo, host = _scan(headers, REQUEST_PSEUDO, "a request")
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedHeaders("no :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedHeaders("CONNECT with :scheme or :path")
    else:
        if b":scheme" not in pseudo:
            raise MalformedHeaders("no :scheme")
        if not pseudo.get(b":path"):
            raise MalformedHeaders("no :path, or an empty one")
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        raise MalformedHeaders("neither :authority nor host")
    if authority is not None and host is not None and authority != host:
        raise MalformedHeaders(f"host {host!r} differs from :authority {authority!r}")
    return pseudo


def check_response(headers) -> int:
    """The status of a response block; MalformedHeaders when RFC 9113 says it is malformed."""
    pseudo, _host = _scan(headers, RESPONSE_PSEUDO, "a response")
    status = pseudo.get(b":status")
    if status is None or _STATUS.fullmatch(status) is None:
        raise MalformedHeaders(f"missing or invalid :status {status!r}")
    return int(status)


def check_trailers(headers) -> None:
    """MalformedHeaders when a trailer block is malformed (no pseudo-headers allowed, RFC 9113 section 8.1)."""
    _scan(headers, NO_PSEUDO, "trailers")


def regular_fields(headers) -> Headers:
    """The regular fields of a checked block: pseudo-headers come first (RFC 9113 section 8.3), so a slice."""
    i = 0
    for name, _value in headers:
        if name[:1] != b":":
            break
        i += 1
    else:
        return []
    return headers[i:] if i else headers


def h2_fields(headers, *, skip: bytes = b"") -> Headers:
    """Regular fields ready for h2's send_headers, which is configured not to re-validate or normalise.

    The part of h2's outbound pass that still matters, in one pass: lower-case
    names, no connection-specific fields, "te" only as "trailers",
    never-indexed for credentials.  Fields that arrived never-indexed keep
    their HeaderTuple type, so the proxy preserves that as an intermediary
    must (RFC 7541 section 7.1.3).  *skip* drops one more field (the Host a
    request carries as :authority).
    """
    out = []
    for field in headers:
        name = field[0]
        lower = name.lower()
        if lower in CONNECTION_SPECIFIC or lower == skip or lower[:1] == b":":
            continue
        if lower == b"te":
            if field[1].strip().lower() != b"trailers":
                continue
        elif lower in SENSITIVE or (lower == b"cookie" and len(field[1]) < 20):
            field = NeverIndexedHeaderTuple(lower, field[1])
        elif lower != name:
            field = field.__class__(lower, field[1]) if isinstance(field, HeaderTuple) else (lower, field[1])
        out.append(field)
    return out
