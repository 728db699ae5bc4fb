"""meshctl-proxy: the sidecar that does the mesh's runtime work.

One process per pod with three listeners:

- outbound (127.0.0.1:4140): what the application sends, redirected by iptables;
- inbound (0.0.0.0:4143): what reaches the application;
- admin (0.0.0.0:4191): ``/metrics``, ``/ready``, ``/live``, ``/shutdown``.

Configuration comes from ``MESHCTL_PROXY_*`` environment variables, defined
once in :mod:`meshctl_proxy.config` (the CLI renders them from the same
definition).  Protocol and policy code is sans-IO; one layer owns the sockets.

This package never imports ``meshctl``, typer, rich or kubernetes: it must be
lean and quick to start.
"""

__version__ = "0.1.0"
