"""SO_ORIGINAL_DST: the parser alone, then real REDIRECT rules in a network namespace."""

from __future__ import annotations

import socket
import struct

import pytest

from meshctl_proxy.transport.original_dst import original_dst, parse_sockaddr
from netns import REPORTER, probe, wait_for_listener


def test_parse_sockaddr_in():
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + socket.inet_aton("198.18.0.3") + bytes(8)
    assert parse_sockaddr(raw) == ("198.18.0.3", 8080)


def test_parse_sockaddr_in6():
    addr = socket.inet_pton(socket.AF_INET6, "fd6d:6573:6873::3")
    raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + bytes(4) + addr + struct.pack("=I", 0)
    assert parse_sockaddr(raw) == ("fd6d:6573:6873::3", 443)


@pytest.mark.parametrize("raw, message", [
    (b"", "too short"),
    (struct.pack("=H", socket.AF_INET) + b"\x00", "sockaddr_in too short"),
    (struct.pack("=H", socket.AF_UNIX) + bytes(14), "unexpected address family"),
])
def test_parse_sockaddr_rejects(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_sockaddr(raw)


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_not_redirected_is_none(family, host):
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2]):
            conn, _ = listener.accept()
            with conn:
                assert original_dst(conn) is None


@pytest.mark.netns
def test_redirected_connections_report_original_destination(netns_lab):
    server, client = netns_lab.pod("server"), netns_lab.pod("client")
    # Inbound on the server pod: port 8080 goes to 4143.  Outbound on the
    # client pod: port 9090 towards the server goes to the local 4140.
    for tool in ("iptables", "ip6tables"):
        server.run([tool, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080",
                    "-j", "REDIRECT", "--to-ports", "4143"])
        client.run([tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9090",
                    "-j", "REDIRECT", "--to-ports", "4140"])
    server.python_popen(REPORTER, "4143")
    client.python_popen(REPORTER, "4140")
    wait_for_listener(server, 4143)
    wait_for_listener(client, 4140)

    replies = probe(client, (server.ip, 8080), (server.ip6, 8080), (server.ip, 9090), (server.ip6, 9090),
                    (server.ip, 4143))
    assert replies == [
        {"port": 4143, "orig_dst": [server.ip, 8080], "peer": f"::ffff:{client.ip}"},
        {"port": 4143, "orig_dst": [server.ip6, 8080], "peer": client.ip6},
        # REDIRECT in OUTPUT rewrites the destination to loopback; the source
        # was chosen before NAT and stays the pod's address.
        {"port": 4140, "orig_dst": [server.ip, 9090], "peer": f"::ffff:{client.ip}"},
        {"port": 4140, "orig_dst": [server.ip6, 9090], "peer": client.ip6},
        # Straight to the listener, no NAT on the way: not redirected.
        {"port": 4143, "orig_dst": None, "peer": f"::ffff:{client.ip}"},
    ]
