"""Golden metrics in Prometheus text format, with Linkerd's names and labels.

Hand-written counters rather than prometheus_client: the hot path is a dict
lookup and two integer additions per request, where prometheus_client's
labelled child lookup and lock cost several microseconds
(``benches/bench_proxy.py --metrics`` measures both).  Linkerd's dashboards
and queries use ``request_total``, ``response_total``,
``response_latency_ms_bucket`` and ``tcp_*`` with ``direction``,
``authority``, ``target_addr`` and ``tls``; those carry over unchanged.

Two bounds keep what a hostile peer can make us export finite:

- label values that come from the network (Host headers, original
  destinations) are admitted through a :class:`LabelBudget`: once it is full
  new values are counted as ``overflow``;
- the total number of series, across families and labels, is capped by one
  :class:`SeriesBudget` (``MESHCTL_PROXY_MAX_METRIC_SERIES``).  The per-label
  cap alone bounded values, not series: every admitted value brings its own
  response and histogram series (~30 each), so 20,000 distinct Host values
  made 30,000 series and a 4.7 MB scrape (issue 13, class 6; the class of
  CVE-2025-43915).  A label set, or a status of one, that the cap refuses is
  counted in its family's overflow series (``authority="overflow"``,
  ``status_code="overflow"``), which always exist, and
  ``metrics_series_refused_total`` says how often that happened.
"""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left
from functools import partial

# linkerd2-proxy's response_latency_ms buckets (milliseconds): 1-5, 10-50,
# 100-500, 1000-5000, 10000-50000, then +Inf.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
                                         1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000)
OVERFLOW = "overflow"


class LabelBudget:
    """Admits at most *limit* distinct values; later newcomers become ``overflow``."""

    __slots__ = ("limit", "_seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def admit(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) >= self.limit:
            return OVERFLOW
        seen.add(value)
        return value


# Series one response status adds: a response_latency_ms histogram (each bucket, +Inf, _count, _sum).
HISTOGRAM_SERIES = len(LATENCY_BUCKETS_MS) + 3
OVERFLOW_STATUS = 0  # the status key of responses folded by the series cap; rendered status_code="overflow"


class SeriesBudget:
    """The cap on the total number of series the proxy exposes, shared by every family.

    A new series takes its cost (:meth:`take`) once, when it is first needed;
    counters are never removed, so what is taken stays taken.  Refusals are
    counted (``metrics_series_refused_total``): the observation goes to an
    overflow series instead.
    """

    __slots__ = ("limit", "used", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        if self.used + n <= self.limit:
            self.used += n
            return True
        self.refused += 1
        return False

    def render(self) -> str:
        return ("# HELP metrics_series_limit The most series this proxy exposes (MESHCTL_PROXY_MAX_METRIC_SERIES).\n"
                "# TYPE metrics_series_limit gauge\n"
                f"metrics_series_limit {self.limit}\n"
                "# HELP metrics_series Series counted against the limit.\n# TYPE metrics_series gauge\n"
                f"metrics_series {self.used}\n"
                "# HELP metrics_series_refused_total New series the limit refused; what they would have counted "
                "is counted in the overflow series.\n# TYPE metrics_series_refused_total counter\n"
                f"metrics_series_refused_total {self.refused}\n")


class ResponseStats:
    __slots__ = ("count", "buckets", "sum_ms")

    def __init__(self) -> None:
        self.count = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum_ms = 0.0

    def observe(self, latency_ms: float) -> None:
        self.count += 1
        self.sum_ms += latency_ms
        self.buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1


class RequestStats:
    """A request counter and its responses by (status, classification, grpc_status), for one label set.

    *budget* pays for each new response series (one, plus a histogram for a
    (status, grpc_status) not seen before); when it refuses, the response is counted under
    ``status_code="overflow"`` of ``sink()``, the family's overflow label set
    (itself when *sink* is None), whose two overflow children are outside the budget.
    """

    __slots__ = ("requests", "responses", "_plain", "_budget", "_sink")

    def __init__(self, budget: SeriesBudget | None = None, sink=None) -> None:
        self.requests = 0
        self.responses: dict[tuple[int, str, str | None], ResponseStats] = {}
        self._plain: dict[int, ResponseStats] = {}  # by status, for responses without grpc-status
        self._budget = budget
        self._sink = sink  # () -> RequestStats, made only when something is folded

    def _series(self, status: int, classification: str, grpc_status: str | None = None) -> ResponseStats:
        key = (status, classification, grpc_status)
        rs = self.responses.get(key)
        if rs is None:
            budget = self._budget
            if budget is not None:
                histogram = any(s == status and g == grpc_status for s, _, g in self.responses)
                if not budget.take(1 if histogram else 1 + HISTOGRAM_SERIES):
                    return (self if self._sink is None else self._sink()).overflow(classification)
            rs = self.responses[key] = ResponseStats()
        return rs

    def response_series(self, status: int, classification: str) -> ResponseStats:
        """The series a response of *status* (no grpc-status) counts in; the cap's overflow one when refused."""
        return self._series(status, classification)

    def overflow(self, classification: str) -> ResponseStats:
        """The response series that counts what the series cap folded."""
        key = (OVERFLOW_STATUS, classification, None)
        rs = self.responses.get(key)
        if rs is None:
            rs = self.responses[key] = ResponseStats()
        return rs

    def response(self, status: int, classification: str, latency_ms: float, grpc_status: str | None = None) -> None:
        self._series(status, classification, grpc_status).observe(latency_ms)

    def histograms(self) -> list[tuple[tuple[int, str | None], list[ResponseStats]]]:
        """Responses grouped by (status, grpc_status), sorted: one latency histogram each, whatever the
        classes (two classes of one status must not repeat a histogram series)."""
        groups: dict[tuple[int, str | None], list[ResponseStats]] = {}
        for (status, _cls, grpc), rs in self.responses.items():
            groups.setdefault((status, grpc), []).append(rs)
        return sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or ""))


class HttpStats(RequestStats):
    """Request and response counters for one (direction, authority, target_addr, tls, peer id, dst labels).

    Responses are counted per (status_code, classification, grpc_status), the
    labels linkerd2-proxy puts on ``response_total``; ``grpc_status`` is None
    (no label) for responses that carry no ``grpc-status``.
    """

    __slots__ = ()

    def record(self, response, latency_ms: float) -> None:
        """Count a whole *response* (a model.Response), classified as Linkerd classifies it."""
        status = response.status
        grpc_status = response.grpc_status()
        if grpc_status is None:  # the per-request path: the class follows from the status alone
            rs = self._plain.get(status)
            if rs is None:
                cls = classify(status)
                rs = self._series(status, cls)
                if self.responses.get((status, cls, None)) is rs:  # a folded one is not remembered: refused each time
                    self._plain[status] = rs
        else:
            rs = self._series(status, classify(status, grpc_status), _grpc_label(grpc_status))
        rs.count += 1
        rs.sum_ms += latency_ms
        rs.buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1


class TcpStats:
    """Connection counters for one (direction, peer, authority, target_addr, tls)."""

    __slots__ = ("opened", "closed", "read_bytes", "write_bytes")

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.read_bytes = 0
        self.write_bytes = 0


def classify(status: int, grpc_status: bytes | None = None) -> str:
    """Linkerd's default response classes: 5xx fails; for gRPC a non-zero grpc-status fails."""
    if grpc_status is not None:
        return "success" if grpc_status.strip() == b"0" else "failure"
    return "failure" if status >= 500 else "success"


def _grpc_label(grpc_status: bytes) -> str:
    # The code as sent ("0".."16"); anything else is kept bounded, as it comes from the network.
    text = grpc_status.strip().decode("ascii", "replace")
    return text if text.isdigit() and len(text) <= 2 else OVERFLOW


def status_label(status: int) -> str:
    return OVERFLOW if status == OVERFLOW_STATUS else str(status)


def render_histogram(add, name: str, labels: str, group: list[ResponseStats]) -> None:
    """One response_latency_ms-style histogram over *group* (the responses of one status)."""
    cumulative = 0
    for i, bound in enumerate(LATENCY_BUCKETS_MS + (float("inf"),)):
        cumulative += sum(rs.buckets[i] for rs in group)
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        add(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}\n')
    add(f"{name}_count{{{labels}}} {sum(rs.count for rs in group)}\n")
    add(f"{name}_sum{{{labels}}} {sum(rs.sum_ms for rs in group):.3f}\n")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs) -> str:
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs if v is not None)


TCP_SERIES = 5  # tcp_open_total, tcp_close_total, tcp_open_connections, tcp_read/write_bytes_total
MAX_SERIES = 10_000  # MESHCTL_PROXY_MAX_METRIC_SERIES; about a 2 MB scrape at most (~210 bytes a series)


class Metrics:
    """The registry: one per proxy process."""

    def __init__(self, *, pod_labels: dict[str, str] | None = None, max_authorities: int = 1000,
                 max_series: int = MAX_SERIES) -> None:
        self.pod_labels = tuple((k, v) for k, v in (pod_labels or {}).items() if v)
        self.authorities = LabelBudget(max_authorities)
        self.targets = LabelBudget(max_authorities)
        # Every family's series count against this one cap (route_* too: RouteMetrics takes it).
        self.series = SeriesBudget(max_series)
        self._http: dict[tuple, HttpStats] = {}
        self._tcp: dict[tuple, TcpStats] = {}
        self.started = time.time()
        # Other families (route_* from meshctl_proxy.telemetry.route_metrics) append their text here.
        self.extra_renderers: list = []

    def http(self, direction: str, authority: str | None, target_addr: str | None, tls: str,
             peer_id: str | None = None, dst_labels: tuple[tuple[str, str], ...] = ()) -> HttpStats:
        # peer_id: the mTLS peer's identity, rendered as client_id (inbound) or server_id (outbound).
        # dst_labels: the endpoint's labels from the destination service, rendered as dst_<name>
        # (outbound), as linkerd2-proxy labels its outbound series (dst_namespace, dst_pod...).
        key = (direction, authority, target_addr, tls, peer_id, dst_labels)
        stats = self._http.get(key)
        if stats is None:
            key = (direction, self.authorities.admit(authority) if authority else authority,
                   self.targets.admit(target_addr) if target_addr else target_addr, tls, peer_id, dst_labels)
            stats = self._http.get(key)
            if stats is None:
                if key == (direction, OVERFLOW, OVERFLOW, tls, None, ()) or not self.series.take(1):
                    return self._http_sink(direction, tls)  # (take(1): request_total; responses pay as they come)
                stats = self._http[key] = HttpStats(self.series, partial(self._http_sink, direction, tls))
        return stats

    def _http_sink(self, direction: str, tls: str) -> HttpStats:
        """The overflow label set of *direction* and *tls*: always there once needed, outside the cap."""
        key = (direction, OVERFLOW, OVERFLOW, tls, None, ())
        sink = self._http.get(key)
        if sink is None:
            sink = self._http[key] = HttpStats(self.series)
        return sink

    def tcp(self, direction: str, peer: str, authority: str | None, target_addr: str | None, tls: str,
            peer_id: str | None = None, dst_labels: tuple[tuple[str, str], ...] = ()) -> TcpStats:
        key = (direction, peer, authority, target_addr, tls, peer_id, dst_labels)
        stats = self._tcp.get(key)
        if stats is None:
            key = (direction, peer, self.authorities.admit(authority) if authority else authority,
                   self.targets.admit(target_addr) if target_addr else target_addr, tls, peer_id, dst_labels)
            stats = self._tcp.get(key)
            if stats is None:
                sink_key = (direction, peer, OVERFLOW, OVERFLOW, tls, None, ())
                if key != sink_key and self.series.take(TCP_SERIES):
                    stats = self._tcp[key] = TcpStats()
                else:
                    stats = self._tcp.get(sink_key)
                    if stats is None:  # the overflow label set: always there once needed, outside the cap
                        stats = self._tcp[sink_key] = TcpStats()
        return stats

    # -- exposition ------------------------------------------------------------
    def render(self) -> bytes:
        pod = self.pod_labels
        out: list[str] = []
        add = out.append

        def http_labels(key):
            direction, authority, target_addr, tls, peer_id, dst_labels = key
            return ((("direction", direction), ("authority", authority or ""), ("target_addr", target_addr or ""),
                     ("tls", tls), (_peer_id_label(direction), peer_id)) + _dst(dst_labels) + pod)

        add("# HELP request_total Total count of HTTP requests.\n# TYPE request_total counter\n")
        for key, s in sorted(self._http.items(), key=_sort_key):
            add(f"request_total{{{_labels(http_labels(key))}}} {s.requests}\n")
        add("# HELP response_total Total count of HTTP responses.\n# TYPE response_total counter\n")
        for key, s in sorted(self._http.items(), key=_sort_key):
            base = http_labels(key)
            for (status, cls, grpc), rs in sorted(s.responses.items(), key=_response_order):
                add(f"response_total{{{_labels(base + (('classification', cls), ('grpc_status', grpc), ('status_code', status_label(status))))}}} "
                    f"{rs.count}\n")
        add("# HELP response_latency_ms Elapsed times between a request's headers being received and its "
            "response stream completing.\n# TYPE response_latency_ms histogram\n")
        for key, s in sorted(self._http.items(), key=_sort_key):
            base = http_labels(key)
            for (status, grpc), group in s.histograms():
                render_histogram(add, "response_latency_ms",
                                 _labels(base + (("grpc_status", grpc), ("status_code", status_label(status)))), group)

        def tcp_labels(key):
            direction, peer, authority, target_addr, tls, peer_id, dst_labels = key
            return ((("direction", direction), ("peer", peer), ("authority", authority or ""),
                     ("target_addr", target_addr or ""), ("tls", tls), (_peer_id_label(direction), peer_id))
                    + _dst(dst_labels) + pod)

        tcp = sorted(self._tcp.items(), key=_sort_key)
        for name, kind, help_, value in (
            ("tcp_open_total", "counter", "Total count of opened connections.", lambda s: s.opened),
            ("tcp_close_total", "counter", "Total count of closed connections.", lambda s: s.closed),
            ("tcp_open_connections", "gauge", "Number of currently-open connections.", lambda s: s.opened - s.closed),
            ("tcp_read_bytes_total", "counter", "Total count of bytes read from peers.", lambda s: s.read_bytes),
            ("tcp_write_bytes_total", "counter", "Total count of bytes written to peers.", lambda s: s.write_bytes),
        ):
            add(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            for key, ts in tcp:
                add(f"{name}{{{_labels(tcp_labels(key))}}} {value(ts)}\n")
        for render in self.extra_renderers:
            add(render())
        add(self.series.render())
        add(_process_metrics(self.started))
        return "".join(out).encode()


def _peer_id_label(direction: str) -> str:
    # Linkerd's names: inbound metrics name the client, outbound ones the server.
    return "client_id" if direction == "inbound" else "server_id"


def _dst(labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((f"dst_{k}", v) for k, v in labels)


def _response_order(item):
    (status, cls, grpc), _ = item
    return status, cls, grpc or ""


def _sort_key(item):
    return tuple("" if v is None else str(v) for v in item[0])


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _process_metrics(started: float) -> str:
    """The process_* metrics Prometheus client libraries export (CPU, memory, fds)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = vms = 0
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        vms, rss = int(fields[0]) * _PAGE, int(fields[1]) * _PAGE
    except OSError:
        rss = usage.ru_maxrss * 1024
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    return (
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        f"process_cpu_seconds_total {usage.ru_utime + usage.ru_stime:.3f}\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        f"process_resident_memory_bytes {rss}\n"
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        f"process_virtual_memory_bytes {vms}\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        f"process_open_fds {fds}\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {started:.3f}\n"
    )
