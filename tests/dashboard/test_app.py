"""The dashboard app over a source of fixed pages: routes, refresh fragments, security headers, assets.

The figures themselves come from a real Prometheus in test_browser.py; here the
source is a plain object so each rule of the app is checked alone.
"""

from __future__ import annotations

import re

import httpx
import pytest

from meshctl.dashboard import serve
from meshctl.dashboard.app import Settings, create_app, grafana_link, static_files
from meshctl.dashboard.hosts import HostPolicy
from meshctl.dashboard.model import (EdgeRow, Golden, LiveCall, NamespacePage, Overview, ResourceRow, RouteRow,
                                     WorkloadPage)
from meshctl.errors import MeshctlError

def row(kind, name, sr=0.99, ns="shop"):
    return ResourceRow(kind, ns, name, 1, 1, Golden(sr, 12.5, 1.5, 9.0, 20.0, 2))


class PagesSource:
    down = False

    def overview(self):
        if self.down:
            raise MeshctlError("Prometheus at http://127.0.0.1:9 is unreachable: connection refused")
        return Overview((row("namespace", "shop"),), (row("deployment", "price-api", 0.9), row("deployment", "web")))

    def namespace(self, ns):
        if ns != "shop":
            raise LookupError(f"namespace {ns!r} has no meshed workloads")
        return NamespacePage(ns, (row("deployment", "web"),), (row("pod", "web-0"),), (row("service", "web-svc"),))

    def workload(self, ns, name):
        out = (EdgeRow("outbound", "price-api", "/namespaces/shop/deployments/price-api", "shop",
                       "web.id", "price-api.id", True, 10.0, 0.9),)
        routes = (RouteRow("GET /api/prices", "price-api-svc:8080", 1.0, 10.0, 0.9, 11.1, 1.0, 2.0, 3.0),)
        return WorkloadPage(row("deployment", name), "web.id", ("web-0",), (), out, routes)

    async def tap(self, ns, name):
        yield LiveCall(1.0, "inbound", "client", "web-0", True, "GET", "web", "/api/products/1", 200, 3.5)


@pytest.fixture
def source():
    return PagesSource()


@pytest.fixture
def client(source):
    from .conftest import serving

    listener = serve.bind("127.0.0.1", 0)
    app = create_app(source, Settings(policy=HostPolicy.for_address("127.0.0.1", listener.port),
                                      grafana_url="http://grafana.test:3000"))
    with serving(app, listener), httpx.Client(base_url=listener.url, timeout=10) as c:
        yield c


def test_pages_render_the_source_with_links(client):
    r = client.get("/")
    assert r.status_code == 200
    assert 'href="/namespaces/shop/deployments/price-api"' in r.text
    assert 'href="/namespaces/shop"' in r.text
    assert "90.00%" in r.text and "12.5 rps" in r.text
    r = client.get("/namespaces/shop")
    assert r.status_code == 200 and "web-0" in r.text and "web-svc" in r.text
    r = client.get("/namespaces/shop/deployments/web")
    assert r.status_code == 200
    assert 'data-direction="outbound" data-peer="price-api"' in r.text  # the dependency map's arrow
    assert 'data-route="GET /api/prices"' in r.text
    assert 'data-tap="/api/tap/namespaces/shop/deployments/web"' in r.text


def test_fragments_carry_only_the_refreshing_part(client):
    r = client.get("/_fragment/namespaces/shop/deployments/web")
    assert r.status_code == 200
    assert "<html" not in r.text and "<nav" not in r.text
    assert 'data-route="GET /api/prices"' in r.text
    assert "Live calls" not in r.text  # the streaming table is never replaced by a refresh


def test_unknown_namespace_is_404_and_a_backend_failure_503_with_its_message(client, source):
    r = client.get("/_fragment/namespaces/nope")
    assert r.status_code == 404 and "namespace &#39;nope&#39; has no meshed workloads" in r.text
    r = client.get("/namespaces/nope")  # the page's frame, then the same message in place of the figures
    assert '<p class="error" role="alert">namespace &#39;nope&#39; has no meshed workloads</p>' in r.text
    source.down = True
    r = client.get("/_fragment/")
    assert r.status_code == 503 and "Prometheus at http://127.0.0.1:9 is unreachable" in r.text


def test_foreign_host_is_refused_before_any_page(client):
    r = client.get("/", headers={"Host": "rebind.evil.example:50750"})
    assert r.status_code == 400
    assert "denied for security reasons" in r.text
    assert client.get("/static/dashboard.css", headers={"Host": "evil.example"}).status_code == 400
    port = client.base_url.port
    assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_nothing_but_get_is_served(client, method):
    for path in ("/", "/namespaces/shop", "/api/tap/namespaces/shop/deployments/web", "/static/dashboard.js"):
        assert client.request(method, path).status_code == 405, path


def test_security_headers_forbid_assets_from_elsewhere(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_every_asset_is_package_data_and_no_page_names_another_origin(client):
    assert {"dashboard.css", "dashboard.js", "favicon.svg"} <= set(static_files())
    for name in static_files():
        assert client.get(f"/static/{name}").status_code == 200
    for path in ("/", "/namespaces/shop", "/namespaces/shop/deployments/web"):
        html = client.get(path).text
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith(("/", "#", "http://grafana.test:3000")), url  # only Grafana links leave


def test_grafana_links_follow_the_shipped_dashboards():
    assert grafana_link(None, "deployment", "shop", "web") is None
    assert grafana_link("http://g:3000/", "deployment", "shop", "web") == \
        "http://g:3000/d/meshctl-deployment/meshctl-deployment?var-namespace=shop&var-deployment=web"
    assert grafana_link("http://g", "namespace", "shop") == "http://g/d/meshctl-namespace/meshctl-namespace?var-namespace=shop"


def test_grafana_links_name_dashboards_that_ship_with_the_variables_they_set():
    import json
    from pathlib import Path
    from urllib.parse import parse_qs, urlsplit

    grafana = Path(__file__).resolve().parents[2] / "manifests" / "grafana"
    for kind, name in (("namespace", ""), ("deployment", "web"), ("pod", "web-0"), ("service", "web-svc")):
        url = urlsplit(grafana_link("http://g", kind, "shop", name))
        uid = url.path.split("/")[2]
        (board,) = [json.loads(p.read_text()) for p in grafana.glob("*.json") if json.loads(p.read_text())["uid"] == uid]
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {k.removeprefix("var-") for k in parse_qs(url.query)} <= variables, (kind, variables)


def test_live_calls_stream_as_server_sent_events(client):
    with client.stream("GET", "/api/tap/namespaces/shop/deployments/web") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    assert "event: call" in lines
    assert '"path": "/api/products/1"' in lines[-1] and '"status": 200' in lines[-1]
