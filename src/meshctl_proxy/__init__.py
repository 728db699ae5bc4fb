"""meshctl-proxy: the sidecar that does the mesh's runtime work.

One process per pod with four listeners: outbound (127.0.0.1:4140, what the
application sends, redirected by iptables), inbound (0.0.0.0:4143, what
reaches the application), admin (0.0.0.0:4191) and control (0.0.0.0:4190,
tap).  The map, lowest layer
first (docs/architecture.md has the picture):

- ``config``, ``model``, ``body``: settings (shared with the CLI), the nouns
  every layer speaks (Request, Response, Endpoint, ProxyError), streamed bodies;
- ``wire/``: sans-IO protocol code: HTTP/1.1 framing, detection, HTTP/2 header rules;
- ``discovery/``: the destination service's resolutions and the watch client;
- ``policy/``: routers, ServiceProfile routes, balancing, retry budget, authorization;
- ``identity/``: certificates, TLS contexts, the TLS transport, mesh mTLS wiring;
- ``telemetry/``: golden and route metrics, the admin listener, tap (the control listener);
- ``transport/``: sockets: listeners, HTTP/1 and HTTP/2 connections, pools, TCP;
- ``iptables``: ``meshctl-proxy init``, the init container.

This package never imports ``meshctl``, typer, rich or kubernetes: it must be
lean and quick to start.
"""

__version__ = "0.1.0"
