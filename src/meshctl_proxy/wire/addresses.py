"""Host spellings in canonical form, sans-IO: one address, one spelling.

A host in a Host header or an authority can name one address many ways, and
the resolver the proxy connects through accepts them all: ``127.1``,
``2130706433``, ``0x7f000001`` and ``0177.0.0.1`` are all 127.0.0.1 to
``getaddrinfo`` (the BSD ``inet_aton`` forms, which POSIX keeps for
compatibility), ``::ffff:127.0.0.1`` is an IPv4-mapped IPv6 address that
reaches 127.0.0.1 on a dual-stack socket (RFC 4291 section 2.5.5.2), and DNS
names compare without regard to case (RFC 4343) or a final dot (an absolute
name, RFC 1034 section 3.1).  Comparing the raw text let a request to the
proxy's own listener, spelt another way, loop through the proxy until it ran
out of file descriptors.  :func:`canonical_host` maps every spelling to one:

- an IPv4 address in any ``inet_aton`` form -> dotted decimal (``127.0.0.1``);
- an IPv6 address -> RFC 5952 text; IPv4-mapped (and the deprecated
  IPv4-compatible ``::a.b.c.d``) -> the IPv4 address; brackets and a zone
  (``%eth0``) removed;
- a name -> lower case without a final dot.

:func:`is_local_host` says whether a host can only be this machine:
loopback (127.0.0.0/8, ::1), unspecified (``0.0.0.0`` and ``::``, which Linux
connects to the local host), and ``localhost`` with its subdomains (RFC 6761
section 6.3 reserves them all for loopback).
"""

from __future__ import annotations

import ipaddress

_IPV4_PART_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)


def _inet_aton_part(part: str) -> int | None:
    """One part of an ``inet_aton`` address: decimal, ``0x`` hex or ``0`` octal."""
    if not part or not part.isascii():
        return None
    try:
        if part[:2].lower() == "0x":
            return int(part[2:], 16) if part[2:] else None
        if len(part) > 1 and part[0] == "0":
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def parse_ipv4_any_form(text: str) -> ipaddress.IPv4Address | None:
    """*text* as the BSD ``inet_aton`` reads it (what ``getaddrinfo`` accepts for a numeric host), or None.

    One to four parts, each decimal, hex or octal; the last part fills the
    bytes the others left: ``127.1`` is 127.0.0.1, ``2130706433`` one number.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_inet_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    *leading, last = values
    if any(v > 0xFF for v in leading) or last > _IPV4_PART_MAX[len(leading)]:
        return None
    number = 0
    for v in leading:
        number = number << 8 | v
    number = number << (8 * (4 - len(leading))) | last
    return ipaddress.IPv4Address(number)


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address *host* spells (any form above, IPv6-carried IPv4 unwrapped), or None for a name."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (RFC 4291 section 2.5.5.1)
            return ipaddress.IPv4Address(int(ip))
        return ip
    return parse_ipv4_any_form(host)


def canonical_host(host: str) -> str:
    """The one spelling of *host*: see the module docstring."""
    ip = parse_ip(host)
    if ip is not None:
        return str(ip)
    host = host.lower()
    if host.endswith(".") and len(host) > 1 and parse_ip(host[:-1]) is None:
        return host[:-1]  # "127.0.0.1." is a name (the resolver refuses it), not the address
    return host


def is_local_host(host: str) -> bool:
    """True when *host* (any spelling) can only be this machine: loopback, unspecified, ``localhost``."""
    ip = parse_ip(host)
    if ip is not None:
        return ip.is_loopback or ip.is_unspecified
    name = canonical_host(host)
    return name == "localhost" or name.endswith(".localhost")
