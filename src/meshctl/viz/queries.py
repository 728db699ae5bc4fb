"""Golden metrics from Prometheus, with Linkerd's queries (viz/metrics-api ``stat_summary.go``,
``top_routes.go``, ``edges.go``): what ``meshctl viz stat|routes|edges``, the demo and the
dashboard show.

Every function takes a :class:`~meshctl.viz.promclient.PrometheusClient` and returns
rows (small frozen dataclasses); renderers (``meshctl.viz.tables``, the dashboard) never
query.  All queries of one call are evaluated at the same instant, so success, RPS and
latency describe the same window.

Deviations from Linkerd, with why:

- latency quantiles use ``rate`` over the whole window, where Linkerd's ``stat`` uses
  ``irate`` (the last two samples): the percentiles then describe the same window as
  the success rate and RPS beside them;
- the MESHED column comes from the scrape targets (``up{job="linkerd-proxy"}``), not
  from listing pods in the Kubernetes API, so it works against any Prometheus
  (a local one has no API server);
- ``TCP_CONN`` counts the connections of the same peer as the byte rates
  (``peer="src"`` inbound, ``peer="dst"`` outbound); Linkerd sums both peers for it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from meshctl.errors import UsageError
from meshctl.viz.resources import STAT_ALL, WORKLOAD_KINDS, Resource

JOB = "linkerd-proxy"
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_ROUTE = "[DEFAULT]"  # Linkerd's name for requests no ServiceProfile route matched
QUANTILES = (0.5, 0.95, 0.99)

# Linkerd's words for a missing identity (edges.go formatMsg), by the proxy's no_tls_reason.
NO_TLS_REASONS = {
    "disabled": "Disabled",
    "loopback": "Loopback",
    "no_authority_in_http_request": "No Authority In HTTP Request",
    "not_http": "Not HTTP",
    "not_provided_by_remote": "Not Provided By Remote",
    "not_provided_by_service_discovery": "Not Provided By Service Discovery",
}


# --- rows ---------------------------------------------------------------------------------------

class _Counted:
    """What a row derives from its ``success_count``/``failure_count`` over ``window_s``."""

    __slots__ = ()
    success_count: float
    failure_count: float
    window_s: float

    @property
    def requests(self) -> float:
        return self.success_count + self.failure_count

    @property
    def success_rate(self) -> float | None:
        return self.success_count / self.requests if self.requests > 0 else None

    @property
    def rps(self) -> float | None:
        return self.requests / self.window_s if self.requests > 0 else None


@dataclasses.dataclass(frozen=True, slots=True)
class StatRow(_Counted):
    """One resource's golden metrics over ``window_s`` seconds (``viz stat``).

    Counts are Prometheus' ``increase`` (extrapolated to the window, so not always
    whole numbers); latencies are in milliseconds, None without requests;
    ``meshed``/``total`` pods are None for services and authorities.
    """

    namespace: str
    kind: str
    name: str
    window_s: float
    success_count: float = 0.0
    failure_count: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    meshed_pods: int | None = None
    total_pods: int | None = None
    tcp_open_connections: float | None = None
    tcp_read_bytes_rate: float | None = None
    tcp_write_bytes_rate: float | None = None

    @property
    def has_traffic(self) -> bool:
        return self.requests > 0


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRow(_Counted):
    """One route of one resource (``viz routes``): what callers saw (effective) and, for
    outbound queries (``--to``), every attempt on the wire (actual, retries included)."""

    resource: str  # the queried resource, e.g. "deploy/web"
    route: str  # the ServiceProfile route name, or "[DEFAULT]"
    authority: str  # the service's name (Linkerd's SERVICE column)
    dst: str  # the authority the route belongs to, without port (svc.ns.svc.cluster.local)
    window_s: float
    success_count: float = 0.0
    failure_count: float = 0.0
    actual_success_count: float | None = None  # None: not an outbound query
    actual_failure_count: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None

    @property
    def actual_requests(self) -> float | None:
        if self.actual_success_count is None:
            return None
        return self.actual_success_count + (self.actual_failure_count or 0.0)

    @property
    def actual_success_rate(self) -> float | None:
        n = self.actual_requests
        return self.actual_success_count / n if n else None

    @property
    def actual_rps(self) -> float | None:
        n = self.actual_requests
        return n / self.window_s if n else None


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeRow:
    """Open connections from one resource to another (``viz edges``), with the identities mTLS proved."""

    kind: str
    src: str
    src_namespace: str
    dst: str
    dst_namespace: str
    client_id: str  # "" when unknown
    server_id: str  # "" when the connection is not mTLS
    no_tls_reason: str  # Linkerd's words ("Not Provided By Service Discovery"), "" when secured

    @property
    def secured(self) -> bool:
        return bool(self.server_id) and not self.no_tls_reason


# --- PromQL -------------------------------------------------------------------------------------

def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def matchers(labels: Mapping[str, str | None], extra: Iterable[str] = ()) -> str:
    """``{a="x", b!=""}`` from equality labels (None values dropped) and raw matchers, sorted."""
    parts = [f"{k}={_quote(v)}" for k, v in labels.items() if v is not None]
    parts += list(extra)
    return "{" + ", ".join(sorted(parts)) + "}"


def selector_matchers(selector: str | None) -> list[str]:
    """A Kubernetes label selector (``-l app=web,tier!=db``) as PromQL matchers on the series' pod labels.

    Linkerd's Prometheus copies every pod label onto the proxy's series (``labelmap``),
    with the characters Prometheus forbids in names made ``_``.
    """
    if not selector:
        return []
    import re

    out = []
    for term in _split_selector(selector):
        m = re.fullmatch(r"\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*", term)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            out.append(f"{_label_name(m.group(1))}{op}{_quote(m.group(3))}")
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*", term)
        if m:
            values = "|".join(re.escape(v.strip()) for v in m.group(3).split(",") if v.strip())
            op = "!~" if m.group(2) == "notin" else "=~"
            out.append(f"{_label_name(m.group(1))}{op}{_quote(values)}")
            continue
        m = re.fullmatch(r"\s*(!?)\s*([A-Za-z0-9_./-]+)\s*", term)
        if m:
            out.append(f'{_label_name(m.group(2))}{"=" if m.group(1) else "!="}""')
            continue
        raise UsageError(f"-l/--selector: cannot parse {term.strip()!r} in {selector!r}")
    return out


def _split_selector(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    terms.append(cur)
    return [t for t in terms if t.strip()]


def _label_name(key: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def window(seconds: float) -> str:
    """A PromQL range: whole seconds (Prometheus takes ``90s`` as well as ``1m30s``)."""
    return f"{max(1, round(seconds))}s"


@dataclasses.dataclass(frozen=True, slots=True)
class _Query:
    """What one golden-metrics query selects and groups by, before it becomes PromQL."""

    labels: Mapping[str, str | None]
    extra: tuple[str, ...]
    group_by: tuple[str, ...]
    tcp_peer: str  # "src" for inbound, "dst" for outbound

    def sel(self, *more: str) -> str:
        return matchers(self.labels, self.extra + more)


def _fqdn(name: str, namespace: str | None) -> str:
    return f"{name}.{namespace or 'default'}.svc.{CLUSTER_DOMAIN}"


def _dst_matchers(res: Resource) -> tuple[dict[str, str | None], tuple[str, ...]]:
    """Matchers for outbound traffic *to* res (Linkerd's promDstQueryLabels)."""
    if res.kind == "authority":
        return {"authority": res.name}, ()
    if res.kind == "namespace":
        return {"dst_namespace": res.name}, ()
    labels = {f"dst_{res.label}": res.name, "dst_namespace": res.namespace}
    return labels, () if res.name else (f'dst_{res.label}!=""',)


def _src_matchers(res: Resource) -> tuple[dict[str, str | None], tuple[str, ...]]:
    """Matchers for traffic *from* res (Linkerd's promQueryLabels)."""
    if res.kind == "namespace":
        return {"namespace": res.name}, ()
    if res.kind in ("service", "authority"):
        raise UsageError(f"--from: {res.kind} is not supported as a source (only workloads send traffic)")
    return {res.label: res.name, "namespace": res.namespace}, () if res.name else (f'{res.label}!=""',)


def _stat_query(res: Resource, *, to: Resource | None, from_: Resource | None) -> _Query:
    """Linkerd's buildRequestLabels / buildServiceRequestLabels for one resource kind."""
    if to is not None and from_ is not None:
        raise UsageError("--to and --from cannot be used together")
    if res.kind == "service":
        if to is not None:
            raise UsageError("--to: a service is not supported as the target of 'to' queries")
        labels: dict[str, str | None] = {"direction": "outbound", "dst_namespace": res.namespace,
                                         "dst_service": res.name}
        extra: tuple[str, ...] = () if res.name else ('dst_service!=""',)
        if from_ is not None:
            more, more_extra = _src_matchers(from_)
            labels.update(more)
            extra += more_extra
        return _Query(labels, extra, ("dst_namespace", "dst_service"), "dst")
    if res.kind == "authority":
        if to is not None or from_ is not None:
            raise UsageError("authorities take neither --to nor --from")
        return _Query({"direction": "inbound", "namespace": res.namespace, "authority": res.name},
                      () if res.name else ('authority!=""',), ("namespace", "authority"), "src")
    own_group = ("namespace",) if res.kind == "namespace" else ("namespace", res.label)
    if from_ is not None:
        labels, extra = _src_matchers(from_)
        labels = {**labels, "direction": "outbound"}
        if res.kind == "namespace":
            labels["dst_namespace"] = res.name
            group = ("dst_namespace",)
        else:
            labels.update({"dst_namespace": res.namespace, f"dst_{res.label}": res.name})
            extra += () if res.name else (f'dst_{res.label}!=""',)
            group = ("dst_namespace", f"dst_{res.label}")
        return _Query(labels, extra, group, "dst")
    if res.kind == "namespace":
        labels, extra = {"namespace": res.name}, ()
    else:
        labels, extra = {res.label: res.name, "namespace": res.namespace}, () if res.name else (f'{res.label}!=""',)
    if to is not None:
        more, more_extra = _dst_matchers(to)
        return _Query({**labels, **more, "direction": "outbound"}, extra + more_extra, own_group, "dst")
    return _Query({**labels, "direction": "inbound"}, extra, own_group, "src")


def _run(client, queries: Mapping[str, str], at: float) -> dict[str, list]:
    """Run named queries concurrently (as Linkerd's getPrometheusMetrics), all at instant *at*."""
    if len(queries) == 1:
        ((key, q),) = queries.items()
        return {key: client.query(q, at=at)}
    with ThreadPoolExecutor(max_workers=min(8, len(queries))) as pool:
        futures = {key: pool.submit(client.query, q, at=at) for key, q in queries.items()}
        return {key: f.result() for key, f in futures.items()}


def _value(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


# --- stat ---------------------------------------------------------------------------------------

def stat(client, resource: Resource, *, window_s: float, to: Resource | None = None, from_: Resource | None = None,
         selector: str | None = None, tcp: bool = True, at: float | None = None) -> list[StatRow]:
    """Golden metrics per object of ``resource.kind`` (``viz stat``); ``kind == "all"`` expands to
    Linkerd's list of kinds.  Without --to/--from every meshed object is listed, traffic or not;
    with them only objects with traffic."""
    if resource.kind == "all":
        rows: list[StatRow] = []
        for kind in STAT_ALL:
            rows += stat(client, Resource(kind, None, resource.namespace), window_s=window_s, to=to, from_=from_,
                         selector=selector, tcp=tcp, at=at)
        return rows
    at = time.time() if at is None else at
    q = _stat_query(resource, to=to, from_=from_)
    extra = tuple(selector_matchers(selector))
    q = dataclasses.replace(q, extra=q.extra + extra)
    w = window(window_s)
    by = ", ".join(q.group_by)
    queries = {"requests": f"sum(increase(response_total{q.sel()}[{w}])) by ({by}, classification)"}
    for quantile in QUANTILES:
        queries[f"p{quantile}"] = (f"histogram_quantile({quantile}, sum(rate(response_latency_ms_bucket{q.sel()}[{w}]))"
                                   f" by (le, {by}))")
    with_tcp = tcp and resource.kind != "authority"  # accepted connections carry no authority
    if with_tcp:
        tcp_sel = q.sel(f'peer="{q.tcp_peer}"')
        queries["tcp_conns"] = f"sum(tcp_open_connections{tcp_sel}) by ({by})"
        queries["tcp_read"] = f"sum(increase(tcp_read_bytes_total{tcp_sel}[{w}])) by ({by})"
        queries["tcp_write"] = f"sum(increase(tcp_write_bytes_total{tcp_sel}[{w}])) by ({by})"
    list_all = to is None and from_ is None and resource.kind not in ("service", "authority")
    if list_all:
        inventory = dict(q.labels)
        inventory.pop("direction", None)
        up = matchers({**inventory, "job": JOB}, q.extra)
        queries["up_sum"] = f"sum(up{up}) by ({by})"
        queries["up_count"] = f"count(up{up}) by ({by})"
    results = _run(client, queries, at)

    def key(sample) -> tuple[str, str]:
        values = [sample.get(label) for label in q.group_by]
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])

    fields: dict[tuple[str, str], dict] = defaultdict(dict)
    for s in results["requests"]:
        cls = s.get("classification")
        if cls in ("success", "failure") and _value(s.value) is not None:
            f = fields[key(s)]
            f[f"{cls}_count"] = f.get(f"{cls}_count", 0.0) + s.value
    for quantile in QUANTILES:
        name = f"latency_ms_p{round(quantile * 100)}"
        for s in results[f"p{quantile}"]:
            if key(s) in fields and _value(s.value) is not None:
                fields[key(s)][name] = s.value
    if with_tcp:
        for label, name, scale in (("tcp_conns", "tcp_open_connections", 1.0),
                                   ("tcp_read", "tcp_read_bytes_rate", 1 / window_s),
                                   ("tcp_write", "tcp_write_bytes_rate", 1 / window_s)):
            for s in results[label]:
                if _value(s.value) is not None and (list_all or key(s) in fields):
                    fields[key(s)][name] = s.value * scale
    if list_all:
        for s in results["up_count"]:
            fields[key(s)]["total_pods"] = int(s.value)
        for s in results["up_sum"]:
            fields[key(s)]["meshed_pods"] = int(s.value)
    rows = []
    for (namespace, name), f in fields.items():
        if not name:
            continue
        if not list_all and not f.get("success_count") and not f.get("failure_count"):
            continue
        if list_all and "total_pods" not in f and not f.get("success_count") and not f.get("failure_count"):
            continue
        if list_all:
            f.setdefault("total_pods", 0)
            f.setdefault("meshed_pods", 0)
        rows.append(StatRow(namespace=namespace if resource.kind != "namespace" else name, kind=resource.kind,
                            name=name, window_s=window_s, **f))
    rows.sort(key=lambda r: (r.namespace, r.name))
    return rows


# --- routes -------------------------------------------------------------------------------------

def _services_of(client, res: Resource, at: float, window_s: float) -> list[str]:
    """The FQDNs of the services whose endpoints are *res* (a workload), from the dst_* labels of
    the traffic sent to it: what Linkerd learns from the Kubernetes API."""
    labels, extra = _dst_matchers(res)
    samples = client.query(f"group(increase(response_total{matchers({**labels, 'direction': 'outbound'}, extra)}"
                           f"[{window(window_s)}])) by (dst_service, dst_namespace)", at=at)
    return sorted({_fqdn(s.get("dst_service"), s.get("dst_namespace")) for s in samples if s.get("dst_service")})


def routes(client, resource: Resource, *, window_s: float, to: Resource | None = None, selector: str | None = None,
           known_routes: Mapping[str, Iterable[str]] | None = None, at: float | None = None) -> list[RouteRow]:
    """Per-route golden metrics (``viz routes``), Linkerd's TopRoutes.

    Inbound by default: the routes of requests *resource* received.  With *to*, the
    routes of the requests *resource* sent to it, with the actual (per attempt)
    counts beside the effective ones, so what retries bought shows.  *known_routes*
    (dst FQDN -> route names, from the ServiceProfiles when the caller has them) adds
    rows for routes without traffic; every service gets its ``[DEFAULT]`` row.
    """
    if resource.kind in ("authority", "all"):
        raise UsageError(f"{resource.kind} cannot be the target of a routes query; "
                         "try an authority in --to instead" if resource.kind == "authority"
                         else "routes takes one resource type, not 'all'")
    if to is not None and resource.kind == "service":
        raise UsageError("--to: the service resource type is not supported as the target of 'to' queries")
    at = time.time() if at is None else at
    w = window(window_s)
    labels: dict[str, str | None] = {}
    extra: list[str] = list(selector_matchers(selector))
    group = "namespace" if resource.kind == "namespace" else resource.label
    if resource.kind == "service":
        # Inbound routes of a service: what its pods received addressed to it.
        labels.update({"direction": "inbound", "namespace": resource.namespace})
        extra.append(f'dst=~{_quote(_dst_regex([_fqdn(resource.name, resource.namespace)] if resource.name else []))}')
        group = "namespace"
    else:
        if resource.kind == "namespace":
            labels["namespace"] = resource.name
        else:
            labels.update({resource.label: resource.name, "namespace": resource.namespace})
            if not resource.name:
                extra.append(f'{resource.label}!=""')
        labels["direction"] = "outbound" if to is not None else "inbound"
    if to is not None:
        if to.kind == "authority":
            dsts = [to.name] if to.name else []
        elif to.kind == "service":
            dsts = [_fqdn(to.name, to.namespace)] if to.name else []
        else:
            dsts = _services_of(client, to, at, window_s)
            if not dsts:
                return []
        extra.append(f"dst=~{_quote(_dst_regex(dsts))}")
    sel = matchers(labels, extra)
    queries = {"requests": f"sum(increase(route_response_total{sel}[{w}])) by ({group}, rt_route, dst, classification)"}
    if to is not None:
        queries["actual"] = (f"sum(increase(route_actual_response_total{sel}[{w}])) "
                             f"by ({group}, rt_route, dst, classification)")
    for quantile in QUANTILES:
        queries[f"p{quantile}"] = (f"histogram_quantile({quantile}, sum(rate(route_response_latency_ms_bucket{sel}[{w}]))"
                                   f" by (le, {group}, rt_route, dst))")
    results = _run(client, queries, at)
    kind_short = str(Resource(resource.kind, "x")).split("/")[0]

    def key(s) -> tuple[str, str, str]:
        owner = s.get(group) if resource.kind != "service" else (resource.name or "")
        return owner, _strip_port(s.get("dst")), s.get("rt_route") or DEFAULT_ROUTE

    fields: dict[tuple[str, str, str], dict] = defaultdict(dict)
    for name, prefix in (("requests", ""), ("actual", "actual_")):
        for s in results.get(name, ()):
            cls = s.get("classification")
            if cls in ("success", "failure") and _value(s.value) is not None:
                f = fields[key(s)]
                f[f"{prefix}{cls}_count"] = f.get(f"{prefix}{cls}_count", 0.0) + s.value
    for quantile in QUANTILES:
        for s in results[f"p{quantile}"]:
            if key(s) in fields and _value(s.value) is not None:
                fields[key(s)][f"latency_ms_p{round(quantile * 100)}"] = s.value
    # Every (resource, service) seen gets its [DEFAULT] row and the profile's other routes.
    for owner, dst in {(o, d) for o, d, _ in list(fields)}:
        fields[(owner, dst, DEFAULT_ROUTE)]
        for route in (known_routes or {}).get(dst, ()):
            fields[(owner, dst, route)]
    rows = []
    for (owner, dst, route), f in fields.items():
        if to is not None:
            f.setdefault("actual_success_count", 0.0)
            f.setdefault("actual_failure_count", 0.0)
        rows.append(RouteRow(resource=f"{kind_short}/{owner}", route=route, authority=dst.split(".")[0], dst=dst,
                             window_s=window_s, **f))
    rows.sort(key=lambda r: (r.resource, r.authority, r.route == DEFAULT_ROUTE, r.route))
    return rows


def _strip_port(authority: str) -> str:
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() else authority


def _dst_regex(dsts: list[str]) -> str:
    import re

    if not dsts:
        return ".+"
    return "(" + "|".join(re.escape(d) for d in dsts) + r")(:\d+)?"


# --- edges --------------------------------------------------------------------------------------

def edges(client, kind: str, *, namespace: str | None = None,
          identity_of: Callable[[str, str], str | None] | None = None, at: float | None = None) -> list[EdgeRow]:
    """Who holds connections to whom (``viz edges``), Linkerd's Edges: outbound
    ``tcp_open_connections`` by source and destination workload, with the server
    identity the source's proxy required.  *identity_of(namespace, pod)* gives the
    client's identity (Linkerd reads it from the pod's ServiceAccount)."""
    if kind in ("service", "authority", "all", "namespace"):
        raise UsageError(f"resource type is not supported by edges: {kind}")
    res = Resource(kind)
    label = res.label
    sel = matchers({"direction": "outbound", "peer": "dst"}, (f'{label}!=""', f'dst_{label}!=""'))
    samples = client.query(f"sum(tcp_open_connections{sel}) by ({label}, dst_{label}, pod, server_id, namespace, "
                           f"dst_namespace, tls, no_tls_reason)", at=at)
    found: dict[tuple[str, str, str, str], EdgeRow] = {}
    for s in samples:
        if not s.value:
            continue
        src_ns, dst_ns = s.get("namespace"), s.get("dst_namespace")
        if namespace is not None and namespace not in (src_ns, dst_ns):
            continue
        edge_key = (src_ns, s.get(label), dst_ns, s.get(f"dst_{label}"))
        if edge_key in found:
            continue
        server_id = s.get("server_id")
        reason = NO_TLS_REASONS.get(s.get("no_tls_reason"), s.get("no_tls_reason"))
        if not server_id and not reason:
            # The proxy had no identity to require of the endpoint: the destination gave none.
            reason = NO_TLS_REASONS["not_provided_by_service_discovery"]
        client_id = (identity_of(src_ns, s.get("pod")) if identity_of else None) or ""
        found[edge_key] = EdgeRow(kind=kind, src=edge_key[1], src_namespace=src_ns, dst=edge_key[3],
                                  dst_namespace=dst_ns, client_id=client_id, server_id=server_id,
                                  no_tls_reason="" if server_id else reason)
    return sorted(found.values(), key=lambda e: (e.src_namespace, e.dst_namespace, e.src, e.dst))
