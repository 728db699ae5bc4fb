"""Per-route metrics with Linkerd's names, in Prometheus text format.

Linkerd's proxy exports, per ServiceProfile route:

- ``route_request_total``, ``route_response_total``, ``route_response_latency_ms``:
  what the application saw, one per request whatever the retries, with
  ``dst`` the logical authority it addressed;
- ``route_actual_request_total``, ``route_actual_response_total``,
  ``route_actual_response_latency_ms``: what went on the wire, one per
  attempt (retries included), with ``dst`` the concrete authority after a
  ``dstOverrides`` split.

Labels: ``direction``, ``dst``, ``rt_route`` (``[DEFAULT]`` for requests no
route matched); responses add ``status_code`` and ``classification``.
Latency is from the request (attempt) until the response head, in ms, with
the proxy's bucket bounds.  ``dst`` values come from the network and are
admitted through a label budget, as the proxy's other metrics.
"""

from __future__ import annotations

from functools import partial

from meshctl_proxy.telemetry.metrics import (OVERFLOW, LabelBudget, RequestStats, SeriesBudget, _escape,
                                             render_histogram, status_label)


class RouteMetrics:
    """The route_* families; :meth:`render` is appended to the proxy's /metrics.

    *series* is the proxy's one cap on the series it exposes (``Metrics.series``):
    a (direction, dst, route) it refuses is counted under ``dst="overflow"``,
    ``rt_route="overflow"``.
    """

    def __init__(self, *, pod_labels: tuple[tuple[str, str], ...] = (), max_dst: int = 1000,
                 series: SeriesBudget | None = None) -> None:
        self.pod_labels = pod_labels
        self._dsts = LabelBudget(max_dst)
        self.series = series
        self._logical: dict[tuple[str, str, str], RequestStats] = {}
        self._actual: dict[tuple[str, str, str], RequestStats] = {}

    def _stats(self, table: dict, direction: str, dst: str, route: str) -> RequestStats:
        key = (direction, dst, route)
        st = table.get(key)
        if st is None:
            key = (direction, self._dsts.admit(dst), route)
            st = table.get(key)
            if st is None:
                series = self.series
                if series is not None and not series.take(1):  # route_*request_total; responses pay as they come
                    return self._sink(table, direction)
                st = table[key] = RequestStats(series, partial(self._sink, table, direction))
        return st

    def _sink(self, table: dict, direction: str) -> RequestStats:
        key = (direction, OVERFLOW, OVERFLOW)
        st = table.get(key)
        if st is None:  # always there once needed, outside the cap
            st = table[key] = RequestStats(self.series)
        return st

    def logical(self, direction: str, dst: str, route: str) -> RequestStats:
        """Counters for what the client asked (route_*)."""
        return self._stats(self._logical, direction, dst, route)

    def actual(self, direction: str, dst: str, route: str) -> RequestStats:
        """Counters for each attempt on the wire (route_actual_*)."""
        return self._stats(self._actual, direction, dst, route)

    def render(self) -> str:
        out: list[str] = []
        for prefix, table, what in (("route", self._logical, "requests"),
                                    ("route_actual", self._actual, "requests sent, retries included")):
            items = sorted(table.items())
            out.append(f"# HELP {prefix}_request_total Total count of HTTP {what} by route.\n"
                       f"# TYPE {prefix}_request_total counter\n")
            for key, st in items:
                out.append(f"{prefix}_request_total{{{self._labels(key)}}} {st.requests}\n")
            out.append(f"# HELP {prefix}_response_total Total count of HTTP responses by route.\n"
                       f"# TYPE {prefix}_response_total counter\n")
            for key, st in items:
                base = self._labels(key)
                for (status, cls, _grpc), rs in sorted(st.responses.items(), key=lambda item: item[0][:2]):
                    out.append(f'{prefix}_response_total{{{base},classification="{cls}",'
                               f'status_code="{status_label(status)}"}} {rs.count}\n')
            out.append(f"# HELP {prefix}_response_latency_ms Elapsed times between a request being sent and "
                       f"its response head, by route.\n# TYPE {prefix}_response_latency_ms histogram\n")
            for key, st in items:
                base = self._labels(key)
                for (status, _grpc), group in st.histograms():  # route stats carry no grpc_status
                    render_histogram(out.append, f"{prefix}_response_latency_ms",
                                     f'{base},status_code="{status_label(status)}"', group)
        return "".join(out)

    def _labels(self, key: tuple[str, str, str]) -> str:
        direction, dst, route = key
        pairs = (("direction", direction), ("dst", dst), ("rt_route", route)) + self.pod_labels
        return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
