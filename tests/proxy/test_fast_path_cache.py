"""Which routers' select() the HTTP/1 fast path may remember per authority (routing.select_is_pure)."""

from meshctl_proxy import config
from meshctl_proxy.identity.mesh import AuthorizingRouter
from meshctl_proxy.telemetry.route_metrics import RouteMetrics
from meshctl_proxy.policy.router import DirectRouter, InboundRouter, select_is_pure
from meshctl_proxy.policy.traffic_router import TrafficRouter


class PicksItsOwn(DirectRouter):
    def select(self, target):
        return super().select(target)


class OwnEndpoints(InboundRouter):
    def endpoint_for(self, host, port):
        return super().endpoint_for(host, port)


def test_the_routers_a_proxy_runs_select_purely():
    traffic = TrafficRouter.from_config(config.load({}), metrics=RouteMetrics())
    assert select_is_pure(DirectRouter())
    assert select_is_pure(traffic)  # the outbound default: DirectRouter's select for what direct() passes
    assert select_is_pure(InboundRouter("127.0.0.1"))
    assert select_is_pure(AuthorizingRouter(InboundRouter("127.0.0.1"), None, None))  # the inbound default


def test_a_router_that_selects_its_own_way_is_asked_every_time():
    assert not select_is_pure(PicksItsOwn())
    assert not select_is_pure(OwnEndpoints("127.0.0.1"))
    assert not select_is_pure(AuthorizingRouter(PicksItsOwn(), None, None))
    assert not select_is_pure(object())
