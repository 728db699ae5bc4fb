"""Geometry of the charts and of the dependency map."""

from __future__ import annotations

from meshctl.dashboard import svg
from meshctl.dashboard.model import Chart, EdgeRow, Series


def edge(direction, peer, rps=1.0, secured=True):
    return EdgeRow(direction, peer, None, "shop", "c", "s" if secured else "", secured, rps, 1.0)


def test_dependency_map_has_one_arrow_per_peer_pointing_along_the_requests():
    m = svg.dependency_map("gw", (edge("inbound", "ingress", secured=False),),
                           (edge("outbound", "product-api"), edge("outbound", "price-api"), edge("outbound", "price-api", 2.0)))
    out = [a for a in m.arrows if a.direction == "outbound"]
    assert sorted(a.peer for a in out) == ["price-api", "product-api"]  # two authorities of price-api: one arrow
    price = next(a for a in out if a.peer == "price-api")
    assert price.label == "3.0 rps"
    center = next(n for n in m.nodes if n.role == "self")
    assert all(a.x1 == center.x + m.node_width and a.x2 > a.x1 for a in out)  # from us, rightwards
    (inbound,) = [a for a in m.arrows if a.direction == "inbound"]
    assert inbound.x2 == center.x and not inbound.secured
    assert all(0 <= n.y and n.y + m.node_height <= m.height for n in m.nodes)


def test_plot_scales_time_left_to_right_and_values_up():
    chart = Chart("RPS", "rps", (Series("rps", ((100.0, 0.0), (110.0, None), (120.0, 8.0))),))
    p = svg.plot(chart, width=100, height=50)
    assert p.top == 10.0  # the next 1-2-5 step above the maximum
    assert p.lines[0].points == "0.0,50.0 100.0,10.0"
    assert p.lines[0].last == 8.0
    percent = svg.plot(Chart("SR", "%", (Series("sr", ((0.0, 50.0),)),)))
    assert percent.top == 100.0
    empty = svg.plot(Chart("x", "ms", (Series("p99", ((0.0, None),)),)))
    assert empty.lines[0].points == "" and empty.lines[0].last is None
