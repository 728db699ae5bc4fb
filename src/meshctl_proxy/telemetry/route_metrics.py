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

from bisect import bisect_left

from meshctl_proxy.telemetry.metrics import LATENCY_BUCKETS_MS, LabelBudget, ResponseStats


class _RouteStats:
    __slots__ = ("requests", "responses")

    def __init__(self) -> None:
        self.requests = 0
        self.responses: dict[tuple[int, str], ResponseStats] = {}

    def response(self, status: int, classification: str, latency_ms: float) -> None:
        rs = self.responses.get((status, classification))
        if rs is None:
            rs = self.responses[(status, classification)] = ResponseStats()
        rs.count += 1
        rs.sum_ms += latency_ms
        rs.buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class RouteMetrics:
    """The route_* families; :meth:`render` is appended to the proxy's /metrics."""

    def __init__(self, *, pod_labels: tuple[tuple[str, str], ...] = (), max_dst: int = 1000) -> None:
        self.pod_labels = pod_labels
        self._dsts = LabelBudget(max_dst)
        self._logical: dict[tuple[str, str, str], _RouteStats] = {}
        self._actual: dict[tuple[str, str, str], _RouteStats] = {}

    def _stats(self, table: dict, direction: str, dst: str, route: str) -> _RouteStats:
        key = (direction, dst, route)
        st = table.get(key)
        if st is None:
            key = (direction, self._dsts.admit(dst), route)
            st = table.get(key)
            if st is None:
                st = table[key] = _RouteStats()
        return st

    def logical(self, direction: str, dst: str, route: str) -> _RouteStats:
        """Counters for what the client asked (route_*)."""
        return self._stats(self._logical, direction, dst, route)

    def actual(self, direction: str, dst: str, route: str) -> _RouteStats:
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
                for (status, cls), rs in sorted(st.responses.items()):
                    out.append(f'{prefix}_response_total{{{base},classification="{cls}",status_code="{status}"}} '
                               f"{rs.count}\n")
            out.append(f"# HELP {prefix}_response_latency_ms Elapsed times between a request being sent and "
                       f"its response head, by route.\n# TYPE {prefix}_response_latency_ms histogram\n")
            for key, st in items:
                base = self._labels(key)
                by_status: dict[int, list[ResponseStats]] = {}
                for (status, _cls), rs in st.responses.items():
                    by_status.setdefault(status, []).append(rs)
                for status, group in sorted(by_status.items()):
                    labels = f'{base},status_code="{status}"'
                    cumulative = 0
                    for i, bound in enumerate(LATENCY_BUCKETS_MS + (float("inf"),)):
                        cumulative += sum(rs.buckets[i] for rs in group)
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        out.append(f'{prefix}_response_latency_ms_bucket{{{labels},le="{le}"}} {cumulative}\n')
                    out.append(f"{prefix}_response_latency_ms_count{{{labels}}} {sum(rs.count for rs in group)}\n")
                    out.append(f"{prefix}_response_latency_ms_sum{{{labels}}} {sum(rs.sum_ms for rs in group):.3f}\n")
        return "".join(out)

    def _labels(self, key: tuple[str, str, str]) -> str:
        direction, dst, route = key
        pairs = (("direction", direction), ("dst", dst), ("rt_route", route)) + self.pod_labels
        return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
