"""Golden metrics in Prometheus text format, with Linkerd's names and labels.

Hand-written counters rather than prometheus_client: the hot path is a dict
lookup and two integer additions per request, where prometheus_client's
labelled child lookup and lock cost several microseconds
(``benches/bench_proxy.py --metrics`` measures both).  Linkerd's dashboards
and queries use ``request_total``, ``response_total``,
``response_latency_ms_bucket`` and ``tcp_*`` with ``direction``,
``authority``, ``target_addr`` and ``tls``; those carry over unchanged.

Label values that come from the network (Host headers, original
destinations) are admitted through a :class:`LabelBudget`: once it is full
new values are counted as ``overflow``, so a flood of unique Host headers
cannot grow memory without bound.
"""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left

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


class ResponseStats:
    __slots__ = ("count", "buckets", "sum_ms")

    def __init__(self) -> None:
        self.count = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum_ms = 0.0


class HttpStats:
    """Request and response counters for one (direction, authority, target_addr, tls, peer id, dst labels).

    Responses are counted per (status_code, classification, grpc_status), the
    labels linkerd2-proxy puts on ``response_total``; ``grpc_status`` is None
    (no label) for responses that carry no ``grpc-status``.
    """

    __slots__ = ("requests", "responses", "_plain")

    def __init__(self) -> None:
        self.requests = 0
        self.responses: dict[tuple[int, str, str | None], ResponseStats] = {}
        self._plain: dict[int, ResponseStats] = {}  # by status, for responses without grpc-status

    def _series(self, status: int, classification: str, grpc_status: str | None = None) -> ResponseStats:
        key = (status, classification, grpc_status)
        rs = self.responses.get(key)
        if rs is None:
            rs = self.responses[key] = ResponseStats()
        return rs

    def response(self, status: int, classification: str, latency_ms: float, grpc_status: str | None = None) -> None:
        rs = self._series(status, classification, grpc_status)
        rs.count += 1
        rs.sum_ms += latency_ms
        rs.buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1

    def record(self, response, latency_ms: float) -> None:
        """Count a whole *response* (a model.Response), classified as Linkerd classifies it."""
        status = response.status
        grpc_status = response.grpc_status()
        if grpc_status is None:  # the per-request path: the class follows from the status alone
            rs = self._plain.get(status)
            if rs is None:
                rs = self._plain[status] = self._series(status, classify(status))
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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs) -> str:
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs if v is not None)


class Metrics:
    """The registry: one per proxy process."""

    def __init__(self, *, pod_labels: dict[str, str] | None = None, max_authorities: int = 1000) -> None:
        self.pod_labels = tuple((k, v) for k, v in (pod_labels or {}).items() if v)
        self.authorities = LabelBudget(max_authorities)
        self.targets = LabelBudget(max_authorities)
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
                stats = self._http[key] = HttpStats()
        return stats

    def tcp(self, direction: str, peer: str, authority: str | None, target_addr: str | None, tls: str,
            peer_id: str | None = None, dst_labels: tuple[tuple[str, str], ...] = ()) -> TcpStats:
        key = (direction, peer, authority, target_addr, tls, peer_id, dst_labels)
        stats = self._tcp.get(key)
        if stats is None:
            key = (direction, peer, self.authorities.admit(authority) if authority else authority,
                   self.targets.admit(target_addr) if target_addr else target_addr, tls, peer_id, dst_labels)
            stats = self._tcp.get(key)
            if stats is None:
                stats = self._tcp[key] = TcpStats()
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
                add(f"response_total{{{_labels(base + (('classification', cls), ('grpc_status', grpc), ('status_code', status)))}}} "
                    f"{rs.count}\n")
        add("# HELP response_latency_ms Elapsed times between a request's headers being received and its "
            "response stream completing.\n# TYPE response_latency_ms histogram\n")
        for key, s in sorted(self._http.items(), key=_sort_key):
            base = http_labels(key)
            for (status, _cls, grpc), rs in sorted(s.responses.items(), key=_response_order):
                labels = _labels(base + (("grpc_status", grpc), ("status_code", status)))
                cumulative = 0
                for bound, n in zip(LATENCY_BUCKETS_MS + (float("inf"),), rs.buckets):
                    cumulative += n
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    add(f'response_latency_ms_bucket{{{labels},le="{le}"}} {cumulative}\n')
                add(f"response_latency_ms_count{{{labels}}} {rs.count}\n")
                add(f"response_latency_ms_sum{{{labels}}} {rs.sum_ms:.3f}\n")

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
            for key, s in tcp:
                add(f"{name}{{{_labels(tcp_labels(key))}}} {value(s)}\n")
        for render in self.extra_renderers:
            add(render())
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
