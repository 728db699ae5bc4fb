"""The Host check against DNS rebinding, as linkerd-web's -enforced-host."""

from __future__ import annotations

import pytest

from meshctl.dashboard.hosts import HostPolicy


@pytest.mark.parametrize("host", ["127.0.0.1:50750", "localhost:50750", "LOCALHOST:50750", "[::1]:50750"])
def test_loopback_address_accepts_its_names_with_our_port(host):
    assert HostPolicy.for_address("127.0.0.1", 50750).allows(host)


@pytest.mark.parametrize("host", [
    "evil.example:50750",          # the rebinding attack: a foreign name resolving to us
    "localhost.evil.example:50750",  # a match must be whole, not a prefix
    "127.0.0.1:50751",             # another port is another origin
    "127.0.0.1",                   # no port: the browser would have used 80
    "127.0.0.1:50750.evil",
    "", None,
])
def test_foreign_hosts_are_refused(host):
    assert not HostPolicy.for_address("127.0.0.1", 50750).allows(host)


def test_port_80_may_be_omitted_as_browsers_do():
    policy = HostPolicy.for_address("127.0.0.1", 80)
    assert policy.allows("127.0.0.1") and policy.allows("localhost:80")


def test_other_addresses_accept_only_themselves():
    policy = HostPolicy.for_address("192.0.2.7", 8084)
    assert policy.allows("192.0.2.7:8084")
    assert not policy.allows("localhost:8084")
    assert HostPolicy.for_address("::1", 9000).allows("[::1]:9000")


def test_enforced_host_regex_is_anchored_whole():
    # linkerd-web's default for the in-cluster web deployment
    policy = HostPolicy.from_regex(r"^(localhost|127\.0\.0\.1|web\.meshctl-viz\.svc\.cluster\.local|web\.meshctl-viz\.svc|\[::1\])(:\d+)?$")
    assert policy.allows("web.meshctl-viz.svc:8084")
    assert not policy.allows("web.meshctl-viz.svc.evil.example")
    assert HostPolicy.from_regex("dash").allows("dash") and not HostPolicy.from_regex("dash").allows("dashx")
