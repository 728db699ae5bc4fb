"""Golden metrics: what ``meshctl viz stat|routes|edges``, the demo and the dashboard show.

The package's modules:

- :mod:`meshctl.viz.promclient`: ``PrometheusClient`` (httpx), ``query``/``query_range``,
  every failure one ``MeshctlError`` line naming the URL;
- :mod:`meshctl.viz.queries`: ``stat``, ``routes``, ``edges`` over a client, with
  Linkerd's PromQL, returning frozen rows (``StatRow``, ``RouteRow``, ``EdgeRow``);
- :mod:`meshctl.viz.resources`: resource names as linkerd takes them (``deploy/web``);
- :mod:`meshctl.viz.tables`: the rows as linkerd's tables and JSON;
- :mod:`meshctl.viz.localprom`: Debian's Prometheus on loopback (tests, the local mesh).

What follows in this module is the older scrape-based summary that the one-shot
``meshctl demo`` still prints from its own scrapes (to be replaced by the above).

Pure functions over Prometheus text (the proxies' ``/metrics``): parse a scrape,
subtract an earlier scrape of the same proxy to get a window, and summarise
per workload (success rate, RPS, latency percentiles, share of mTLS traffic),
per route (``route_*`` series, effective vs actual success showing what
retries bought), and per edge (who calls whom, with which identities).

Percentiles follow Prometheus' ``histogram_quantile``: linear interpolation
inside the bucket that holds the rank, the highest finite bound when the rank
falls in ``+Inf``; so they read the same as Linkerd's viz and Grafana.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Scrape:
    """One proxy's counters at one moment: (metric name, sorted labels) -> value."""

    at: float
    series: Mapping[tuple[str, Labels], float]

    def minus(self, earlier: "Scrape | None") -> "Scrape":
        """The increase since *earlier* (counters and histogram buckets); a reset counts from zero."""
        if earlier is None:
            return self
        out = {}
        for key, value in self.series.items():
            before = earlier.series.get(key, 0.0)
            out[key] = value - before if value >= before else value
        return Scrape(at=self.at - earlier.at, series=out)


def parse_scrape(text: str, *, at: float) -> Scrape:
    """Parse Prometheus text exposition (what the proxy's admin ``/metrics`` serves)."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Scrape(at=at, series=series)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative (upper bound, count) pairs; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # Prometheus: the highest finite bucket bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclasses.dataclass(frozen=True, slots=True)
class Stat:
    """Golden metrics of one group of traffic over a window."""

    name: str
    requests: float
    successes: float
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    tls_requests: float = 0.0
    actual_requests: float | None = None  # routes: attempts on the wire, retries included
    actual_successes: float | None = None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.requests if self.requests else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def meshed_share(self) -> float | None:
        return self.tls_requests / self.requests if self.requests else None

    @property
    def actual_success_rate(self) -> float | None:
        if not self.actual_requests:
            return None
        return (self.actual_successes or 0.0) / self.actual_requests

    def to_dict(self) -> dict:
        out = {
            "name": self.name, "requests": round(self.requests), "successRate": _round(self.success_rate),
            "rps": round(self.rps, 2), "latencyMsP50": _round(self.p50_ms), "latencyMsP95": _round(self.p95_ms),
            "latencyMsP99": _round(self.p99_ms), "meshedShare": _round(self.meshed_share),
        }
        if self.actual_requests is not None:
            out["actualRequests"] = round(self.actual_requests)
            out["actualSuccessRate"] = _round(self.actual_success_rate)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _select(scrape: Scrape, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
    for (metric, labels), value in scrape.series.items():
        if metric != name:
            continue
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            yield d, value


def _latency(scrape: Scrape, metric: str, key: str | None, group: str | None, **match: str) -> tuple[float | None, ...]:
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in _select(scrape, f"{metric}_bucket", **match):
        if key is not None and labels.get(key) != group:
            continue
        buckets[float(labels["le"])] += value
    pairs = list(buckets.items())
    return tuple(histogram_quantile(q, pairs) for q in (0.5, 0.95, 0.99))


def workload_stats(scrapes: Mapping[str, Scrape]) -> list[Stat]:
    """Inbound golden metrics of each workload (keyed by workload name), as ``viz stat`` shows them."""
    out = []
    for workload, scrape in sorted(scrapes.items()):
        requests = successes = tls = 0.0
        for labels, value in _select(scrape, "response_total", direction="inbound"):
            requests += value
            if labels.get("classification") == "success":
                successes += value
            if labels.get("tls") == "true":
                tls += value
        p50, p95, p99 = _latency(scrape, "response_latency_ms", None, None, direction="inbound")
        out.append(Stat(workload, requests, successes, scrape.at, p50, p95, p99, tls_requests=tls))
    return out


def route_stats(scrape: Scrape, *, direction: str = "outbound") -> list[Stat]:
    """Per-route golden metrics (``route_*``), effective (what the caller saw) next to actual (each attempt)."""
    routes: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for prefix, offset in (("route_response_total", 0), ("route_actual_response_total", 2)):
        for labels, value in _select(scrape, prefix, direction=direction):
            key = (labels.get("dst", ""), labels.get("rt_route", ""))
            if offset and key not in routes:
                # actual series name the concrete dst after dstOverrides: fold them
                # onto the logical route of the same name.
                key = next((k for k in routes if k[1] == key[1]), key)
            routes[key][offset] += value
            if labels.get("classification") == "success":
                routes[key][offset + 1] += value
    out = []
    for (dst, route), (req, ok, actual, actual_ok) in sorted(routes.items()):
        p50, p95, p99 = _latency(scrape, "route_response_latency_ms", "rt_route", route, direction=direction, dst=dst)
        out.append(Stat(f"{route} [{dst}]" if route else f"[default] [{dst}]", req, ok, scrape.at, p50, p95, p99,
                        actual_requests=actual, actual_successes=actual_ok))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    """Traffic from one workload to one destination, with the identities mTLS proved."""

    src: str
    dst: str
    requests: float
    client_id: str
    server_id: str

    @property
    def secured(self) -> bool:
        return bool(self.server_id)

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "requests": round(self.requests),
                "clientId": self.client_id, "serverId": self.server_id, "secured": self.secured}


def edges(window: Mapping[str, Scrape], identities: Mapping[str, str], *,
          totals: Mapping[str, Scrape] | None = None) -> list[Edge]:
    """Outbound edges of each workload (``viz edges``): destination authority and the server identity proved.

    Requests come from *window*; the server identity from the request series
    or, failing that, from the connections the proxy opened to that authority
    (``tcp_open_total{peer="dst"}``) in *totals* (whole-life scrapes: pooled
    connections usually opened before the window).
    """
    found: dict[tuple[str, str], float] = defaultdict(float)
    server_ids: dict[tuple[str, str], str] = {}
    for workload, scrape in window.items():
        for labels, value in _select(scrape, "response_total", direction="outbound"):
            key = (workload, labels.get("authority", ""))
            found[key] += value
            if labels.get("server_id"):
                server_ids[key] = labels["server_id"]
    for workload, scrape in (totals or {}).items():
        for labels, value in _select(scrape, "tcp_open_total", direction="outbound", peer="dst"):
            if value and labels.get("server_id"):
                server_ids.setdefault((workload, labels.get("authority", "")), labels["server_id"])
    return [Edge(src, dst, n, identities.get(src, ""), server_ids.get((src, dst), ""))
            for (src, dst), n in sorted(found.items()) if n > 0]
