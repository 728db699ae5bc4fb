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

import re

from meshctl.errors import InputError

# Kubernetes' label rules (apimachinery validation): a Service name is a
# DNS-1035 label (starts with a letter), a namespace a DNS-1123 label.
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_LABEL = 63


def check_service(name: str) -> str:
    if len(name) > MAX_LABEL or not _DNS1035.fullmatch(name):
        raise InputError(f"service name {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
                         f"starting with a letter, at most {MAX_LABEL} characters)")
    return name


def check_namespace(name: str) -> str:
    if len(name) > MAX_LABEL or not _DNS1123.fullmatch(name):
        raise InputError(f"namespace {name!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
                         f"at most {MAX_LABEL} characters)")
    return name


def check_cluster_domain(domain: str) -> str:
    domain = domain.rstrip(".")
    if len(domain) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(domain):
        raise InputError(f"cluster domain {domain!r} is not a DNS subdomain")
    return domain


def profile_name(service: str, namespace: str, cluster_domain: str) -> str:
    """``SERVICE.NAMESPACE.svc.CLUSTER-DOMAIN``: the authority the proxy looks profiles up by."""
    return f"{check_service(service)}.{check_namespace(namespace)}.svc.{check_cluster_domain(cluster_domain)}"
