"""Transparent interception: where a redirected connection was going.

``meshctl-proxy init`` installs iptables ``REDIRECT`` rules in the nat table,
so a connection the application opened to ``10.0.0.7:80`` arrives on the
proxy's outbound listener instead.  The kernel keeps the pre-NAT destination
in the connection's conntrack entry and hands it back through the
``SO_ORIGINAL_DST`` socket option (``linux/netfilter_ipv4.h``; for IPv6
``IP6T_SO_ORIGINAL_DST`` in ``linux/netfilter_ipv6/ip6_tables.h``, the same
number on ``SOL_IPV6``).  linkerd2-proxy reads it the same way
(``linkerd/proxy/transport/src/orig_dst.rs``).

This module is the only place that knows the socket option's layout; parsing
is a pure function so it is tested without root.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

# linux/netfilter_ipv4.h: #define SO_ORIGINAL_DST 80
SO_ORIGINAL_DST = 80
# linux/netfilter_ipv6/ip6_tables.h: #define IP6T_SO_ORIGINAL_DST 80
IP6T_SO_ORIGINAL_DST = 80
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)

# struct sockaddr_in is 16 bytes, struct sockaddr_in6 is 28.
_SOCKADDR_IN_LEN = 16
_SOCKADDR_IN6_LEN = 28

# Errors that mean "this connection has no NAT record", not "something broke":
# ENOENT when conntrack knows no such connection (no redirect happened, or the
# nf_conntrack module is not loaded in this namespace), ENOPROTOOPT/EOPNOTSUPP
# when the kernel has no netfilter at all (or the family lacks it).
_NOT_REDIRECTED_ERRNOS = frozenset({errno.ENOENT, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """Decode a ``struct sockaddr_in`` or ``sockaddr_in6`` as returned by getsockopt.

    ``sin_family`` is in host byte order; the port and address are in network
    byte order.
    """
    if len(raw) < 2:
        raise ValueError(f"sockaddr too short ({len(raw)} bytes)")
    (family,) = struct.unpack("=H", raw[:2])
    if family == socket.AF_INET:
        if len(raw) < 8:
            raise ValueError(f"sockaddr_in too short ({len(raw)} bytes)")
        (port,) = struct.unpack("!H", raw[2:4])
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError(f"sockaddr_in6 too short ({len(raw)} bytes)")
        (port,) = struct.unpack("!H", raw[2:4])
        # raw[4:8] is sin6_flowinfo, raw[24:28] sin6_scope_id: neither names the destination.
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"unexpected address family {family} in sockaddr")


def _is_v4_mapped(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The destination the peer originally connected to, or None if not redirected.

    None means one of: the kernel has no NAT record for this connection, or
    the record's destination is this socket's own address (conntrack tracks
    every connection once the module is loaded, so an un-NATed one reports
    its real destination, which is the listener itself).  Callers then fall
    back to the request's own addressing (Host / ``:authority``), as Linkerd's
    ingress mode does.
    """
    try:
        local = sock.getsockname()
    except OSError:
        return None
    family = sock.family
    # A dual-stack AF_INET6 socket accepting an IPv4 client holds an IPv4
    # conntrack entry: ask the IPv4 layer.
    if family == socket.AF_INET6 and _is_v4_mapped(local[0]):
        family = socket.AF_INET
        local_host = str(ipaddress.IPv6Address(local[0]).ipv4_mapped)
    else:
        local_host = local[0]
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_LEN)
        elif family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_LEN)
        else:
            return None
    except OSError as exc:
        if exc.errno in _NOT_REDIRECTED_ERRNOS:
            return None
        raise
    dst = parse_sockaddr(raw)
    if ipaddress.ip_address(dst[0]) == ipaddress.ip_address(local_host.split("%")[0]) and dst[1] == local[1]:
        return None
    return dst
