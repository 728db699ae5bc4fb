"""Geometry for the two drawings, computed here and drawn by the templates as inline SVG.

Hand-written SVG instead of a vendored chart or graph library: a sparkline is
one ``<polyline>`` and the dependency map is at most a few dozen boxes and
arrows, both a few lines of arithmetic, where the smallest graph libraries on
npm are tens of kilobytes of JavaScript to ship, license and audit.
"""

from __future__ import annotations

import dataclasses
import math

from meshctl.dashboard.model import Chart, EdgeRow


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    name: str
    points: str  # SVG polyline points; "" when the series had no values
    last: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Plot:
    title: str
    unit: str
    width: int
    height: int
    top: float  # the value at the top edge
    lines: tuple[Line, ...]


def plot(chart: Chart, *, width: int = 280, height: int = 70) -> Plot:
    """Scale a chart's series into a width x height box (time left to right, zero at the bottom)."""
    times = [t for s in chart.series for t, v in s.points if v is not None]
    values = [v for s in chart.series for _, v in s.points if v is not None]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    top = 100.0 if chart.unit == "%" else _nice_ceiling(max(values, default=0.0))
    span = (t1 - t0) or 1.0
    lines = []
    for s in chart.series:
        pts = [(round((t - t0) / span * width, 1), round(height - (v / top) * height, 1))
               for t, v in s.points if v is not None]
        last = next((v for _, v in reversed(s.points) if v is not None), None)
        lines.append(Line(s.name, " ".join(f"{x},{y}" for x, y in pts), last))
    return Plot(chart.title, chart.unit, width, height, top, tuple(lines))


def _nice_ceiling(value: float) -> float:
    """The next 1, 2 or 5 times a power of ten at or above *value* (axis tops people can read)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= value:
            return float(m * 10 ** exp)
    return float(10 ** (exp + 1))


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    href: str | None
    x: float
    y: float
    role: str  # "self", "inbound" or "outbound"


@dataclasses.dataclass(frozen=True, slots=True)
class Arrow:
    direction: str
    peer: str
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    secured: bool


@dataclasses.dataclass(frozen=True, slots=True)
class DepMap:
    width: int
    height: int
    node_width: int
    node_height: int
    nodes: tuple[Node, ...]
    arrows: tuple[Arrow, ...]


NODE_W, NODE_H, ROW_GAP = 190, 34, 22


def dependency_map(name: str, inbound: tuple[EdgeRow, ...], outbound: tuple[EdgeRow, ...], *,
                   width: int = 900) -> DepMap:
    """Three columns, as Linkerd's octopus graph: callers left, the workload centre, callees right.

    One node per peer (edges to the same peer are one arrow); arrows point in
    the direction of the requests and carry the peer's RPS.
    """
    left = _peers(inbound)
    right = _peers(outbound)
    rows = max(len(left), len(right), 1)
    height = rows * NODE_H + (rows + 1) * ROW_GAP
    xs = {"inbound": 10.0, "self": (width - NODE_W) / 2, "outbound": float(width - NODE_W - 10)}

    def column_y(count: int, i: int) -> float:
        block = count * NODE_H + (count - 1) * ROW_GAP
        return (height - block) / 2 + i * (NODE_H + ROW_GAP)

    center = Node(f"self:{name}", name, None, xs["self"], column_y(1, 0), "self")
    nodes, arrows = [center], []
    mid_y = center.y + NODE_H / 2
    for role, peers in (("inbound", left), ("outbound", right)):
        for i, edge in enumerate(peers):
            node = Node(f"{role}:{edge.peer}", edge.peer, edge.peer_href, xs[role], column_y(len(peers), i), role)
            nodes.append(node)
            ny = node.y + NODE_H / 2
            label = f"{edge.rps:.1f} rps"
            if role == "inbound":
                arrows.append(Arrow(role, edge.peer, node.x + NODE_W, ny, center.x, mid_y, label, edge.secured))
            else:
                arrows.append(Arrow(role, edge.peer, center.x + NODE_W, mid_y, node.x, ny, label, edge.secured))
    return DepMap(width, height, NODE_W, NODE_H, tuple(nodes), tuple(arrows))


def _peers(edges: tuple[EdgeRow, ...]) -> list[EdgeRow]:
    merged: dict[str, EdgeRow] = {}
    for e in edges:
        seen = merged.get(e.peer)
        if seen is None:
            merged[e.peer] = e
        else:  # same peer through two authorities or identities: one arrow, summed, secured only if both are
            merged[e.peer] = dataclasses.replace(seen, rps=seen.rps + e.rps, secured=seen.secured and e.secured)
    return sorted(merged.values(), key=lambda e: e.peer)
