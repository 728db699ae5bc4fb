"""Golden metrics: what ``meshctl viz stat|routes|edges``, the demo and the dashboard show.

The package's modules:

- :mod:`meshctl.viz.promclient`: ``PrometheusClient`` (httpx), ``query``/``query_range``,
  every failure one ``MeshctlError`` line naming the URL;
- :mod:`meshctl.viz.queries`: ``stat``, ``routes``, ``edges`` over a client, with
  Linkerd's PromQL, returning frozen rows (``StatRow``, ``RouteRow``, ``EdgeRow``);
- :mod:`meshctl.viz.resources`: resource names as linkerd takes them (``deploy/web``);
- :mod:`meshctl.viz.tables`: the rows as linkerd's tables and JSON;
- :mod:`meshctl.viz.localprom`: Debian's Prometheus on loopback (tests, the local mesh).
"""
