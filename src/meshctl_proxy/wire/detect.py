"""Protocol detection on the first bytes of a connection, sans-IO.

Like linkerd2-proxy: HTTP/2 with prior knowledge (the client preface, RFC
9113 section 3.4), HTTP/1.x (a method token and a space, RFC 9112 section
3), a TLS ClientHello (record type 22, version 3.x: handed to the TLS seam),
else opaque TCP.  ``None`` means "not enough bytes yet"; the caller gives up
after the detection timeout and forwards as opaque TCP.
"""

from __future__ import annotations

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H1 = "http/1"
H2 = "h2"
TLS = "tls"
TCP = "tcp"

# Longest method we wait for (RFC 9110 methods are short; extension methods
# such as PROPPATCH or VERSION-CONTROL stay under 20).
_MAX_METHOD = 20
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


def detect(buf: bytes) -> str | None:
    if not buf:
        return None
    if buf[:1] == b"P" and H2_PREFACE.startswith(buf[:24]):
        if len(buf) >= len(H2_PREFACE):
            return H2
        if len(buf) < 4 or buf.startswith(b"PRI "):
            return None  # could still be the preface ("PRI " is no HTTP/1 method we forward)
    if buf[0] == 0x16:
        if len(buf) < 2:
            return None
        return TLS if buf[1] == 0x03 else TCP
    for i, byte in enumerate(buf[:_MAX_METHOD + 1]):
        if byte == 0x20:  # SP after a method token
            return H1 if i > 0 else TCP
        if byte not in _TOKEN_CHARS:
            return TCP
    return None if len(buf) <= _MAX_METHOD else TCP
