"""The inbound policy: each default policy and the require-identity ports, as a table."""

from __future__ import annotations

import pytest

from meshctl_proxy import config
from meshctl_proxy.policy.authorization import AuthzStats, InboundPolicy

ID = "web.shop.serviceaccount.identity.meshctl.cluster.local"
CLUSTER = config.parse_networks("10.0.0.0/8,fd00::/8")


@pytest.mark.parametrize("default, port, identity, ip, allowed", [
    ("all-unauthenticated", 8080, None, "203.0.113.9", True),
    ("all-unauthenticated", 8080, ID, "10.1.2.3", True),
    ("all-unauthenticated", 9090, None, "10.1.2.3", False),  # 9090 requires identity
    ("all-unauthenticated", 9090, ID, "10.1.2.3", True),
    ("all-authenticated", 8080, None, "10.1.2.3", False),
    ("all-authenticated", 8080, ID, "203.0.113.9", True),
    ("cluster-authenticated", 8080, ID, "10.1.2.3", True),
    ("cluster-authenticated", 8080, ID, "::ffff:10.1.2.3", True),
    ("cluster-authenticated", 8080, ID, "fd00::5", True),
    ("cluster-authenticated", 8080, ID, "203.0.113.9", False),
    ("cluster-authenticated", 8080, None, "10.1.2.3", False),
    ("deny", 8080, ID, "10.1.2.3", False),
])
def test_policy_table(default, port, identity, ip, allowed):
    policy = InboundPolicy(default, frozenset({9090}), CLUSTER)
    decision = policy.authorize(port=port, client_identity=identity, client_ip=ip)
    assert decision.allowed is allowed, decision.reason


def test_policy_from_proxy_config_and_counters_render():
    cfg = config.load({"MESHCTL_PROXY_DEFAULT_INBOUND_POLICY": "all-authenticated",
                       "MESHCTL_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY": "9090"})
    policy = InboundPolicy.from_config(cfg)
    assert policy.default == "all-authenticated" and policy.require_identity_ports == {9090}
    stats = AuthzStats()
    stats.count("http", policy.authorize(port=80, client_identity=None, client_ip="10.0.0.1"), 80)
    stats.count("tcp", policy.authorize(port=80, client_identity=ID, client_ip="10.0.0.1"), 80)
    text = stats.render()
    assert 'inbound_http_authz_deny_total{srv_port="80"} 1\n' in text
    assert 'inbound_tcp_authz_allow_total{srv_port="80"} 1\n' in text
