#!/usr/bin/env python3
"""Write the Grafana dashboards of ``manifests/grafana/`` (run from the repository root).

Linkerd ships these dashboards with viz (top line, namespace, deployment, pod, service,
route, authority); ours keep their layout and Linkerd's metric names and labels, so they
work on the Prometheus ``meshctl viz install`` runs, on the local mesh's, and on Linkerd's.
They are generated rather than hand-edited: one panel helper per kind of figure keeps
the PromQL of all seven consistent.  ``tests/viz/test_grafana.py`` runs every panel's
query against a real Prometheus scraping the demo and checks these files are this
script's output.

    python scripts/grafana_dashboards.py          # rewrite manifests/grafana/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "meshctl" / "manifests" / "grafana"
RATE = "$__rate_interval"  # Grafana's: at least four scrape intervals
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _variable(name: str, query: str, *, label: str | None = None, include_all: bool = False) -> dict:
    return {"name": name, "label": label or name, "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "refresh": 2, "sort": 1, "includeAll": include_all,
            "multi": False, "current": {}, "options": [], "hide": 0}


DATASOURCE_VARIABLE = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                       "current": {}, "hide": 0, "refresh": 1}


def _panel(title: str, exprs: list[tuple[str, str]], *, unit: str, kind: str = "timeseries", max_: float | None = None,
           width: int = 8) -> dict:
    targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
               for i, (expr, legend) in enumerate(exprs)]
    defaults: dict = {"unit": unit}
    if max_ is not None:
        defaults.update({"min": 0, "max": max_})
    return {"type": kind, "title": title, "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "gridPos": {"w": width, "h": 7}}


def success(sel: str, by: str = "", legend: str = "success rate") -> tuple[str, str]:
    group = f" by ({by})" if by else ""
    sel_ok = sel[:-1] + ', classification="success"}' if sel != "{}" else '{classification="success"}'
    return (f"sum(irate(response_total{sel_ok}[{RATE}])){group} / sum(irate(response_total{sel}[{RATE}])){group}",
            legend)


def rps(sel: str, by: str = "", legend: str = "requests/s") -> tuple[str, str]:
    group = f" by ({by})" if by else ""
    return f"sum(irate(request_total{sel}[{RATE}])){group}", legend


def latency(sel: str, q: float, by: str = "", legend: str | None = None) -> tuple[str, str]:
    group = f", {by}" if by else ""
    return (f"histogram_quantile({q}, sum(irate(response_latency_ms_bucket{sel}[{RATE}])) by (le{group}))",
            legend or f"p{round(q * 100)}")


def golden_row(sel: str, *, by: str = "", legend: str = "") -> list[dict]:
    """Success rate, request volume, latency: the three panels every Linkerd dashboard starts with."""
    return [
        _panel("SUCCESS RATE", [success(sel, by, legend or "success rate")], unit="percentunit", max_=1),
        _panel("REQUEST VOLUME", [rps(sel, by, legend or "requests/s")], unit="reqps"),
        _panel("LATENCY", [latency(sel, 0.5, by, legend and f"p50 {legend}"), latency(sel, 0.95, by, legend and f"p95 {legend}"),
                           latency(sel, 0.99, by, legend and f"p99 {legend}")], unit="ms"),
    ]


def tcp_row(sel: str, *, by: str = "", legend: str = "") -> list[dict]:
    group = f" by ({by})" if by else ""
    return [
        _panel("TCP CONNECTIONS", [(f"sum(tcp_open_connections{sel}){group}", legend or "open")], unit="short"),
        _panel("TCP READ", [(f"sum(irate(tcp_read_bytes_total{sel}[{RATE}])){group}", legend or "read")], unit="Bps"),
        _panel("TCP WRITE", [(f"sum(irate(tcp_write_bytes_total{sel}[{RATE}])){group}", legend or "write")],
               unit="Bps"),
    ]


def _layout(panels: list[dict]) -> list[dict]:
    x = y = row_h = 0
    for i, p in enumerate(panels, 1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"].update({"x": x, "y": y})
        p["id"] = i
        x += w
        row_h = max(row_h, h)
    return panels


def _header(text: str) -> dict:
    return {"type": "text", "title": "", "gridPos": {"w": 24, "h": 2},
            "options": {"mode": "markdown", "content": f"### {text}"}}


def dashboard(uid: str, title: str, variables: list[dict], panels: list[dict]) -> dict:
    return {
        "uid": uid, "title": title, "tags": ["meshctl", "linkerd"], "timezone": "", "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-5m", "to": "now"},
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]},
        "annotations": {"list": []}, "links": [], "panels": _layout(panels),
    }


NS_VAR = _variable("namespace", 'label_values(process_start_time_seconds{job="linkerd-proxy"}, namespace)')


def _owner_var(kind: str) -> dict:
    return _variable(kind, f'label_values(process_start_time_seconds{{job="linkerd-proxy", namespace="$namespace"}}, {kind})')


def top_line() -> dict:
    ns_in = '{direction="inbound", namespace=~"$namespace"}'
    return dashboard("meshctl-top-line", "meshctl / Top Line", [{**NS_VAR, "includeAll": True, "multi": True,
                                                                "allValue": ".+"}], [
        _header("Global: every meshed workload's inbound traffic"),
        *golden_row(ns_in),
        _header("By namespace"),
        *golden_row(ns_in, by="namespace", legend="{{namespace}}"),
        _header("By deployment"),
        *golden_row('{direction="inbound", namespace=~"$namespace", deployment!=""}', by="namespace, deployment",
                    legend="{{namespace}}/{{deployment}}"),
    ])


def namespace() -> dict:
    sel = '{direction="inbound", namespace="$namespace"}'
    return dashboard("meshctl-namespace", "meshctl / Namespace", [NS_VAR], [
        _header("Namespace: $namespace"),
        *golden_row(sel),
        _header("Deployments"),
        *golden_row('{direction="inbound", namespace="$namespace", deployment!=""}', by="deployment",
                    legend="{{deployment}}"),
        _header("Pods"),
        *golden_row('{direction="inbound", namespace="$namespace", pod!=""}', by="pod", legend="{{pod}}"),
        *tcp_row('{direction="inbound", namespace="$namespace", peer="src", deployment!=""}', by="deployment",
                 legend="{{deployment}}"),
    ])


def _workload(kind: str, title: str, uid: str) -> dict:
    inbound = f'{{direction="inbound", namespace="$namespace", {kind}="${kind}"}}'
    outbound = f'{{direction="outbound", namespace="$namespace", {kind}="${kind}"}}'
    outbound_known = f'{{direction="outbound", namespace="$namespace", {kind}="${kind}", dst_deployment!=""}}'
    return dashboard(uid, title, [NS_VAR, _owner_var(kind)], [
        _header(f"{kind}/${kind}: inbound"),
        *golden_row(inbound),
        _panel("INBOUND BY CLIENT IDENTITY", [rps(inbound, "client_id", "{{client_id}}")], unit="reqps", width=12),
        # `or vector(0)`: with no mTLS request at all the share is 0, not "no data".
        _panel("INBOUND mTLS", [(f"(sum(irate(response_total{inbound[:-1]}, tls=\"true\"}}[{RATE}])) or vector(0)) / "
                                 f"sum(irate(response_total{inbound}[{RATE}]))", "share over mTLS")],
               unit="percentunit", max_=1, width=12),
        *tcp_row(inbound[:-1] + ', peer="src"}'),
        _header(f"{kind}/${kind}: outbound"),
        *golden_row(outbound),
        *golden_row(outbound_known, by="dst_namespace, dst_deployment", legend="{{dst_namespace}}/{{dst_deployment}}"),
        *tcp_row(outbound_known[:-1] + ', peer="dst"}', by="dst_deployment", legend="{{dst_deployment}}"),
    ])


def deployment() -> dict:
    return _workload("deployment", "meshctl / Deployment", "meshctl-deployment")


def pod() -> dict:
    return _workload("pod", "meshctl / Pod", "meshctl-pod")


def service() -> dict:
    # A Service has no proxy of its own: what its callers' proxies saw sending to it.
    sel = '{direction="outbound", dst_namespace="$namespace", dst_service="$service"}'
    var = _variable("service", 'label_values(response_total{direction="outbound", dst_namespace="$namespace"}, dst_service)')
    return dashboard("meshctl-service", "meshctl / Service", [NS_VAR, var], [
        _header("svc/$service, as its callers see it"),
        *golden_row(sel),
        _header("By caller"),
        *golden_row('{direction="outbound", dst_namespace="$namespace", dst_service="$service", deployment!=""}',
                    by="namespace, deployment", legend="{{namespace}}/{{deployment}}"),
        _header("By endpoint"),
        *golden_row(sel, by="dst_pod", legend="{{dst_pod}}"),
    ])


def authority() -> dict:
    sel = '{direction="inbound", authority="$authority"}'
    var = _variable("authority", 'label_values(response_total{direction="inbound"}, authority)')
    return dashboard("meshctl-authority", "meshctl / Authority", [var], [
        _header("au/$authority: what the pods serving it received"),
        *golden_row(sel),
        _header("By deployment"),
        *golden_row('{direction="inbound", authority="$authority", deployment!=""}', by="namespace, deployment",
                    legend="{{namespace}}/{{deployment}}"),
    ])


def route() -> dict:
    # ServiceProfile routes: route_* with rt_route (Linkerd's route dashboard).
    outbound = '{direction="outbound", namespace="$namespace", deployment="$deployment"}'

    def route_success(metric: str, sel: str, legend: str) -> tuple[str, str]:
        return (f'sum(irate({metric}{sel[:-1]}, classification="success"}}[{RATE}])) by (rt_route) / '
                f"sum(irate({metric}{sel}[{RATE}])) by (rt_route)", legend)

    def route_rps(metric: str, sel: str, legend: str) -> tuple[str, str]:
        return f"sum(irate({metric}{sel}[{RATE}])) by (rt_route)", legend

    def route_latency(sel: str, q: float) -> tuple[str, str]:
        return (f"histogram_quantile({q}, sum(irate(route_response_latency_ms_bucket{sel}[{RATE}])) by (le, rt_route))",
                f"p{round(q * 100)} {{{{rt_route}}}}")

    # Inbound: what the deployment's proxies served, by its own ServiceProfile (every attempt a caller
    # made reaches it, so no actual/retries here); outbound: what it called, by the callee's profile.
    inbound = '{direction="inbound", namespace="$namespace", deployment="$deployment"}'
    return dashboard("meshctl-route", "meshctl / Route", [NS_VAR, _owner_var("deployment")], [
        _header("Routes deploy/$deployment serves (inbound, by its own ServiceProfile)"),
        _panel("SUCCESS RATE", [route_success("route_response_total", inbound, "{{rt_route}}")],
               unit="percentunit", max_=1),
        _panel("REQUEST VOLUME", [route_rps("route_request_total", inbound, "{{rt_route}}")], unit="reqps"),
        _panel("LATENCY", [route_latency(inbound, 0.5), route_latency(inbound, 0.95),
                           route_latency(inbound, 0.99)], unit="ms"),
        _header("Routes deploy/$deployment calls: effective (what the app saw) and actual (each attempt, "
                "retries included)"),
        _panel("SUCCESS RATE", [route_success("route_response_total", outbound, "effective {{rt_route}}"),
                                route_success("route_actual_response_total", outbound, "actual {{rt_route}}")],
               unit="percentunit", max_=1),
        _panel("REQUEST VOLUME", [route_rps("route_request_total", outbound, "effective {{rt_route}}"),
                                  route_rps("route_actual_request_total", outbound, "actual {{rt_route}}")],
               unit="reqps"),
        _panel("LATENCY", [route_latency(outbound, 0.5), route_latency(outbound, 0.95),
                           route_latency(outbound, 0.99)], unit="ms"),
        _panel("RETRIES", [(f"sum(irate(route_actual_request_total{outbound}[{RATE}])) by (rt_route) - "
                            f"sum(irate(route_request_total{outbound}[{RATE}])) by (rt_route)", "{{rt_route}}")],
               unit="reqps", width=24),
    ])


DASHBOARDS = {"top-line": top_line, "namespace": namespace, "deployment": deployment, "pod": pod,
              "service": service, "route": route, "authority": authority}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make(), indent=2) + "\n" for name, make in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
