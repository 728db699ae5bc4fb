"""Hosts in canonical form: one spelling per place a connection can reach.

A client names an upstream by a Host or ``:authority`` it writes as it likes,
and the resolver the proxy connects through accepts far more spellings of one
address than the four dotted decimals: ``127.1``, ``0x7f.1``, ``2130706433``,
``0177.0.0.1`` and ``127.0.0.0001`` all reach 127.0.0.1 through ``inet_aton``
(which ``getaddrinfo`` uses for numeric hosts); ``::ffff:127.0.0.1`` reaches it
from an IPv6 socket; ``LocalHost`` is ``localhost`` (RFC 4343: DNS names are
case-insensitive).  Anything keyed by the address as written (connection pools,
the loop check) is then defeated by respelling it: 6,000 spellings of one
backend left 6,000 idle upstream connections (issue 13, class 7).

:func:`canonical_host` maps every such spelling to the one the proxy compares:
IPv4 in dotted decimal, IPv6 compressed (an IPv4-mapped one as its IPv4),
names in lower case.  A trailing dot is kept: ``web.`` is absolute and ``web``
goes through the resolver's search list, so they may name different hosts.
Note that ``0127.0.0.1`` is octal (87.0.0.1), as the resolver reads it: the
canonical form is what the connection would reach, not what the text suggests.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

# inet_aton's numeric forms: one to four parts, each decimal, octal (leading 0) or hex (0x).
_INET_ATON = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """The canonical spelling of *host* (a name, an IPv4 or IPv6 literal, brackets allowed)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            ip = ipaddress.IPv6Address(text)
        except ValueError:
            return text.lower()
        mapped = ip.ipv4_mapped
        return str(mapped) if mapped is not None else str(ip)
    if _INET_ATON.fullmatch(text):
        try:
            return socket.inet_ntoa(socket.inet_aton(text))
        except OSError:  # a part out of range (256.1.1.1): not an address, and no name either
            return text
    return text.lower()
