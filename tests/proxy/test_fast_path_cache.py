"""Which routers' select() the HTTP/1 fast path may remember per authority (http1_proxy._pure_select)."""

from meshctl_proxy import config
from meshctl_proxy.http1_proxy import _pure_select
from meshctl_proxy.mtls import AuthorizingRouter
from meshctl_proxy.route_metrics import RouteMetrics
from meshctl_proxy.routing import DirectRouter, InboundRouter
from meshctl_proxy.traffic import TrafficRouter


class PicksItsOwn(DirectRouter):
    def select(self, target):
        return super().select(target)


class OwnEndpoints(InboundRouter):
    def endpoint_for(self, host, port):
        return super().endpoint_for(host, port)


def test_the_routers_a_proxy_runs_select_purely():
    traffic = TrafficRouter.from_config(config.load({}), metrics=RouteMetrics())
    assert _pure_select(DirectRouter())
    assert _pure_select(traffic)  # the outbound default: DirectRouter's select for what direct() passes
    assert _pure_select(InboundRouter("127.0.0.1"))
    assert _pure_select(AuthorizingRouter(InboundRouter("127.0.0.1"), None, None))  # the inbound default


def test_a_router_that_selects_its_own_way_is_asked_every_time():
    assert not _pure_select(PicksItsOwn())
    assert not _pure_select(OwnEndpoints("127.0.0.1"))
    assert not _pure_select(AuthorizingRouter(PicksItsOwn(), None, None))
    assert not _pure_select(object())
