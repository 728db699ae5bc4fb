"""What the proxy reports: golden metrics (``metrics``), per-route metrics (``route_metrics``), the admin listener (``admin``)."""
