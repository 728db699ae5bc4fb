"""Kubernetes' rules for names and values (apimachinery validation), checked before anything is rendered.

What the API server would refuse is refused here first, with linkerd's words where linkerd
checks the same thing (cli/cmd/options.go): names, quantities, pull policies.

A Service name is a DNS-1035 label (starts with a letter), a namespace a
DNS-1123 label, a cluster domain a DNS-1123 subdomain.  The names come from the
command line (``-n``, ``-L``, a SERVICE argument, ``--cluster-domain``), so a
bad one is a :class:`~meshctl.errors.UsageError` (exit 2) that names the flag.
"""

from __future__ import annotations

import decimal
import re

from meshctl.errors import UsageError

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PULL_POLICY_ERROR = "--image-pull-policy must be one of: Always, IfNotPresent, Never"  # linkerd's words

# Kubernetes resource.Quantity, as apimachinery's regexp accepts it.
_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE]|)")
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"m": decimal.Decimal("0.001"), "": 1, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
            "P": 10 ** 15, "E": 10 ** 18}


def parse_quantity(raw: str) -> decimal.Decimal:
    """A Kubernetes quantity (``100m``, ``64Mi``, ``1e3``) as an exact number; ValueError if it is none."""
    match = _QUANTITY.fullmatch(str(raw).strip())
    if not match:
        raise ValueError(f"expected a Kubernetes quantity such as 100m or 64Mi, got {raw!r}")
    number, suffix = decimal.Decimal(match.group(1)), match.group(2)
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number * decimal.Decimal(_BINARY.get(suffix) or _DECIMAL[suffix])


def resource_order_error(kind: str, request: str | None, limit: str | None) -> str | None:
    """linkerd's message when a request is above its limit (cpu or memory), else None."""
    if not request or not limit:
        return None
    if parse_quantity(request) > parse_quantity(limit):
        return f"The {kind} limit '{limit}' cannot be lower than the {kind} request '{request}'"
    return None

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
