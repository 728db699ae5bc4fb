"""The dashboard's ASGI app: server-side pages, fragments that refresh them, live calls over SSE.

Routes (all GET; nothing in the dashboard changes state, so every other method is 405):

- ``/``, ``/namespaces/{ns}``, ``/namespaces/{ns}/deployments/{name}``: the pages;
- the same paths under ``/_fragment``: only the part of the page that refreshes
  (the page's script swaps it in every few seconds, so no full reload);
- ``/api/tap/namespaces/{ns}/deployments/{name}``: live calls as Server-Sent Events;
- ``/static/...``: the stylesheet and the script, package data (nothing from a CDN:
  the Content-Security-Policy below forbids the browser to load anything from elsewhere);
- ``/ready``: for probes.

Every request first passes :class:`~meshctl.dashboard.hosts.EnforcedHostMiddleware`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from importlib import resources

from meshctl.dashboard import svg
from meshctl.dashboard.hosts import EnforcedHostMiddleware, HostPolicy
from meshctl.errors import MeshctlError

log = logging.getLogger("meshctl.dashboard")

# 'self' only: an asset from a CDN, an inline script or a form posting elsewhere
# would be refused by the browser (and show as a console error in the tests).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
LIVE_MARKER = "<!-- the page's figures -->"  # where a page's shell is split to stream its figures after it
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    policy: HostPolicy
    grafana_url: str | None = None
    refresh_s: float = 5.0
    live_calls_max: int = 25  # rows kept in the live-calls table (newest first)
    chart_span: str = "10 min"  # what the charts' x axis spans (the source's range)
    title: str = "meshctl"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} rps" if value < 100 else f"{value:.0f} rps"


def count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def grafana_link(base: str | None, kind: str, namespace: str, name: str = "") -> str | None:
    """The Grafana dashboard of meshctl's set (manifests/grafana/: uid ``meshctl-KIND``, variables
    ``namespace`` and the kind, as Linkerd's ``linkerd-KIND`` dashboards) for one resource."""
    if not base:
        return None
    from urllib.parse import urlencode

    base = base.rstrip("/")
    variables = {"var-namespace": namespace} if kind == "namespace" else {"var-namespace": namespace, f"var-{kind}": name}
    return f"{base}/d/meshctl-{kind}/meshctl-{kind}?{urlencode(variables)}"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("meshctl.dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, ms=ms, rps=rps, count=count)
    env.globals.update(grafana_link=grafana_link, dependency_map=svg.dependency_map, plot=svg.plot)
    return env


def create_app(source, settings: Settings):
    """The dashboard over *source* (see :mod:`meshctl.dashboard.source`), behind the Host check."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    env = _environment()

    def fragment_of(name: str, build, params: dict) -> tuple[int, str]:
        """The refreshing part of a page: (status, HTML), the figures or the error that stopped them."""
        try:
            data = build(**params)
        except LookupError as exc:
            return 404, env.get_template("error_fragment.html").render(message=str(exc.args[0] if exc.args else exc))
        except MeshctlError as exc:
            return 503, env.get_template("error_fragment.html").render(message=str(exc))
        return 200, env.get_template(name).render(settings=settings, chart_span=settings.chart_span, **data)

    def page(template: str, fragment: str, build):
        def part(request):
            # Sync: Starlette runs it in its thread pool, so blocking Prometheus queries never stall
            # the event loop (and the live-calls streams on it).
            started = time.perf_counter()
            status, html = fragment_of(fragment, build, request.path_params)
            timing = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
            return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Server-Timing": timing})

        async def full(request):
            # The page's frame (navigation, title, headings) goes out at once and paints while the
            # figures are queried; they follow in the same response, rendered by the server, so the
            # page needs no script to show them.  Errors then arrive as the fragment's message
            # (the frame's 200 is sent); the fragment URLs keep their 404/503.
            from markupsafe import Markup
            from starlette.concurrency import run_in_threadpool
            from starlette.responses import StreamingResponse

            shell = env.get_template(template).render(settings=settings, live=Markup(LIVE_MARKER),
                                                      **request.path_params)
            head, tail = shell.split(LIVE_MARKER)

            async def body():
                yield head
                _, html = await run_in_threadpool(fragment_of, fragment, build, request.path_params)
                yield html
                yield tail

            return StreamingResponse(body(), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

        return full, part

    overview = page("overview.html", "overview_live.html", lambda: {"page": source.overview()})
    namespace = page("namespace.html", "namespace_live.html", lambda ns: {"page": source.namespace(ns)})
    workload = page("workload.html", "workload_live.html", lambda ns, name: {"page": source.workload(ns, name)})

    async def tap(request):
        from sse_starlette.sse import EventSourceResponse

        ns, name = request.path_params["ns"], request.path_params["name"]

        async def events():
            try:
                async for call in source.tap(ns, name):
                    yield {"event": "call", "data": json.dumps(call.to_dict())}
            except MeshctlError as exc:
                yield {"event": "tap-error", "data": json.dumps({"message": str(exc)})}
            except Exception as exc:  # a bug, not the user's: say so on the page, keep the traceback in the log
                log.exception("live calls of %s/%s failed", ns, name)
                yield {"event": "tap-error", "data": json.dumps({"message": f"live calls failed: {exc!r}"})}

        return EventSourceResponse(events(), ping=10, headers=SECURITY_HEADERS)

    def ready(request):
        return PlainTextResponse("ok\n")

    static = StaticFiles(packages=[("meshctl.dashboard", "static")])
    routes = [
        Route("/", overview[0]),
        Route("/_fragment/", overview[1]),
        Route("/namespaces/{ns}", namespace[0]),
        Route("/_fragment/namespaces/{ns}", namespace[1]),
        Route("/namespaces/{ns}/deployments/{name}", workload[0]),
        Route("/_fragment/namespaces/{ns}/deployments/{name}", workload[1]),
        Route("/api/tap/namespaces/{ns}/deployments/{name}", tap),
        Route("/ready", ready),
        Mount("/static", static, name="static"),
    ]
    app = Starlette(routes=routes)
    return EnforcedHostMiddleware(app, settings.policy)


def static_files() -> list[str]:
    """The assets shipped as package data (what the browser may load)."""
    return sorted(p.name for p in resources.files("meshctl.dashboard").joinpath("static").iterdir())
