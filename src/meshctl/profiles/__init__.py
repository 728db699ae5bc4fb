"""ServiceProfiles from what users already have: OpenAPI specs, .proto files, or a template.

Pure functions over plain data (no stdin, terminal or cluster): the CLI module
``meshctl.cli.profile`` reads the input and renders the output.  The model they
produce is :mod:`meshctl_proxy.policy.service_profile`, the one the proxy matches routes with.

- :func:`meshctl.profiles.openapi.load_spec` / :func:`~meshctl.profiles.openapi.from_openapi`:
  Swagger 2.0, OpenAPI 3.0 and 3.1, YAML or JSON.
- :func:`meshctl.profiles.proto.from_proto`: one route per rpc.
- :func:`meshctl.profiles.template.render_template`: a commented skeleton.
- :func:`profile_name`, :func:`check_service`, :func:`check_namespace`: naming rules.
- :func:`meshctl.profiles.render.dump`: YAML or JSON text, ready for ``kubectl apply -f -``.
"""

from __future__ import annotations

from meshctl.kubevalues import check_cluster_domain, check_namespace, check_service

__all__ = ["check_cluster_domain", "check_namespace", "check_service", "profile_name"]


def profile_name(service: str, namespace: str, cluster_domain: str) -> str:
    """``SERVICE.NAMESPACE.svc.CLUSTER-DOMAIN``: the authority the proxy looks profiles up by."""
    return f"{check_service(service)}.{check_namespace(namespace)}.svc.{check_cluster_domain(cluster_domain)}"
