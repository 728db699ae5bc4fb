"""The routers' shortcut (policy.router.DirectRouter.shortcut): side-effect free, remembered only when declared."""

from meshctl_proxy import config
from meshctl_proxy.policy.authorizing_router import AuthorizingRouter
from meshctl_proxy.model import INBOUND, OUTBOUND, ConnectionContext, Endpoint, Request
from meshctl_proxy.policy.authorization import AuthzStats, InboundPolicy
from meshctl_proxy.policy.router import DirectRouter, InboundRouter
from meshctl_proxy.policy.traffic_router import TrafficRouter
from meshctl_proxy.telemetry.route_metrics import RouteMetrics


def request(authority="web:8080", direction=OUTBOUND, orig_dst=None, peer_identity=None):
    ctx = ConnectionContext(direction, ("10.0.0.9", 40000), ("127.0.0.1", 4143), orig_dst,
                            peer_identity=peer_identity)
    return Request(b"GET", b"/", authority, [(b"host", authority.encode())], context=ctx)


class PicksItsOwn(DirectRouter):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def select(self, target):
        self.asked += 1
        return Endpoint("127.0.0.1", 9000 + self.asked)  # a different answer each time


class DeclaresItsOwnPure(PicksItsOwn):
    remembers_endpoints = True


def test_the_default_routers_shortcut_to_their_select_and_remember_it():
    traffic = TrafficRouter.from_config(config.load({}), metrics=RouteMetrics())
    for router, req, expected in (
        (DirectRouter(), request(), Endpoint("web", 8080)),
        (DirectRouter(), request(orig_dst=("10.1.1.1", 80)), Endpoint("10.1.1.1", 80)),
        (InboundRouter("127.0.0.1"), request(direction=INBOUND, orig_dst=("10.0.0.5", 8080)),
         Endpoint("127.0.0.1", 8080)),
        (traffic, request("1.2.3.4:80"), Endpoint("1.2.3.4", 80)),  # an IP: not a name the mesh resolves
    ):
        first = router.shortcut(req)
        assert first == expected
        assert router.shortcut(req) is first  # the same object: the pools match it by identity


def test_a_router_that_overrides_select_is_asked_every_time_unless_it_declares_otherwise():
    own = PicksItsOwn()
    assert [own.shortcut(request()).port for _ in range(3)] == [9001, 9002, 9003]
    declared = DeclaresItsOwnPure()
    assert [declared.shortcut(request()).port for _ in range(3)] == [9001, 9001, 9001]


def test_names_the_mesh_resolves_take_dispatch():
    traffic = TrafficRouter.from_config(config.load({}), metrics=RouteMetrics())
    assert traffic.shortcut(request("web.shop.svc.cluster.local:8080")) is None


def test_a_request_select_refuses_takes_dispatch_which_answers_it():
    router = DirectRouter(own_addrs=frozenset({("127.0.0.1", 4140)}))
    assert router.shortcut(request("127.0.0.1:4140")) is None  # would loop: dispatch() gives the 502
    assert router.shortcut(request("bad:port")) is None


def test_authorization_shortcut_only_asks_and_commit_counts_once():
    stats = AuthzStats()
    router = AuthorizingRouter(InboundRouter("127.0.0.1"), InboundPolicy("all-unauthenticated", frozenset(), ()),
                               stats)
    req = request(direction=INBOUND, orig_dst=("10.0.0.5", 8080))
    req.headers.append((b"meshctl-client-id", b"forged"))
    endpoint = router.shortcut(req)
    assert endpoint == Endpoint("127.0.0.1", 8080)
    router.shortcut(req)
    assert not stats.counts  # asking counts nothing
    assert req.header(b"meshctl-client-id") == b"forged"
    router.commit(req, endpoint)
    assert stats.counts == {("http", "allow", 8080): 1}
    assert req.header(b"meshctl-client-id") is None


def test_a_denied_request_has_no_shortcut():
    stats = AuthzStats()
    router = AuthorizingRouter(InboundRouter("127.0.0.1"), InboundPolicy("all-authenticated", frozenset(), ()),
                               stats)
    assert router.shortcut(request(direction=INBOUND, orig_dst=("10.0.0.5", 8080))) is None
    assert not stats.counts  # dispatch() counts it and answers 403
    allowed = request(direction=INBOUND, orig_dst=("10.0.0.5", 8080), peer_identity="web.shop.serviceaccount")
    assert router.shortcut(allowed) == Endpoint("127.0.0.1", 8080)


class ShortcutsItsOwnWay(DirectRouter):
    def shortcut(self, request):
        return None


def test_overriding_shortcut_also_stops_its_answers_being_remembered():
    assert ShortcutsItsOwnWay.remembers_endpoints is False
    assert TrafficRouter.remembers_endpoints is True  # declared: its shortcut is DirectRouter's, by suffix
    assert AuthorizingRouter(ShortcutsItsOwnWay(), None, None).remembers_endpoints is False
    assert AuthorizingRouter(InboundRouter("127.0.0.1"), None, None).remembers_endpoints is True
