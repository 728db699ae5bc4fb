"""The destination service: tells proxies where an authority's endpoints are.

- :mod:`meshctl.destination.discovery`: the ONE discovery interface the
  control plane reads the cluster through (:class:`Discovery`), the plain
  cluster view it resolves against (:class:`Snapshot`), and
  :class:`SnapshotDiscovery`, a base that turns "publish a new snapshot" into
  change notifications.  Implementations: the local registry (here) and the
  Kubernetes one (``meshctl.k8s``, control-plane issue).
- :mod:`meshctl.destination.registry`: the local registry, a YAML/JSON file
  of services, endpoints and ServiceProfiles, watched for changes.
- :mod:`meshctl.destination.server`: the HTTP/1.1 server streaming JSON
  resolutions to proxies (protocol in ``docs/destination.md``).

What goes on the wire is :mod:`meshctl_proxy.discovery.resolution` (defined once, read
by the proxy's destination client).
"""
