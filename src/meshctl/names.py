"""Kubernetes' naming rules (apimachinery validation), checked before anything is rendered.

A Service name is a DNS-1035 label (starts with a letter), a namespace a
DNS-1123 label, a cluster domain a DNS-1123 subdomain.  The names come from the
command line (``-n``, ``-L``, a SERVICE argument, ``--cluster-domain``), so a
bad one is a :class:`~meshctl.errors.UsageError` (exit 2) that names the flag.
"""

from __future__ import annotations

import re

from meshctl.errors import UsageError

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_LABEL = 63


def check_service(name: str) -> str:
    if len(name) > MAX_LABEL or not _DNS1035.fullmatch(name):
        raise UsageError(f"service name {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
                         f"starting with a letter, at most {MAX_LABEL} characters)")
    return name


def check_namespace(name: str, *, flag: str = "") -> str:
    if len(name) > MAX_LABEL or not _DNS1123.fullmatch(name):
        where = f"{flag}: " if flag else ""
        raise UsageError(f"{where}namespace {name!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
                         f"at most {MAX_LABEL} characters)")
    return name


def check_cluster_domain(domain: str) -> str:
    domain = domain.rstrip(".")
    if len(domain) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(domain):
        raise UsageError(f"cluster domain {domain!r} is not a DNS subdomain")
    return domain
