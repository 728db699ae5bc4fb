"""``meshctl dashboard``: Linkerd's web dashboard for meshctl, a small ASGI app served by meshctl itself.

Layers, each its own module:

- :mod:`~meshctl.dashboard.model`: what pages show (frozen values);
- :mod:`~meshctl.dashboard.source`: builds those values from Prometheus (through
  ``meshctl.viz``, the same queries as ``meshctl viz stat|routes|edges``), the mesh's
  inventory and the proxies' tap;
- :mod:`~meshctl.dashboard.svg`: geometry of the charts and the dependency map;
- :mod:`~meshctl.dashboard.app`: the Starlette app: Jinja2 pages rendered on the
  server, fragments the page's script swaps in every few seconds, live calls over
  Server-Sent Events, assets from package data (never a CDN);
- :mod:`~meshctl.dashboard.hosts`: the Host check against DNS rebinding;
- :mod:`~meshctl.dashboard.serve` and :mod:`~meshctl.dashboard.launch`: the command:
  bind, print the URLs, open a browser where a person sits, serve until Ctrl-C.

starlette, uvicorn, sse-starlette and jinja2 are imported only inside these
functions, never by ``meshctl --help``.
"""
