"""Resource names as ``linkerd viz`` takes them: ``deploy``, ``deploy/web``, ``svc/web``, ``au/host:80``...

Pure parsing; the label each kind carries in Prometheus is Linkerd's
(``k8s.KindToL5DLabel``): the kind itself, except a Kubernetes Job, whose
label is ``k8s_job`` (``job`` is Prometheus' own).
"""

from __future__ import annotations

import dataclasses

from meshctl.errors import UsageError


# Canonical kind -> the names linkerd accepts for it (kubectl's short names, singular, plural).
KINDS: dict[str, tuple[str, ...]] = {
    "namespace": ("ns", "namespace", "namespaces"),
    "deployment": ("deploy", "deployment", "deployments"),
    "pod": ("po", "pod", "pods"),
    "service": ("svc", "service", "services"),
    "authority": ("au", "authority", "authorities"),
    "statefulset": ("sts", "statefulset", "statefulsets"),
    "daemonset": ("ds", "daemonset", "daemonsets"),
    "replicaset": ("rs", "replicaset", "replicasets"),
    "replicationcontroller": ("rc", "replicationcontroller", "replicationcontrollers"),
    "job": ("job", "jobs"),
    "cronjob": ("cj", "cronjob", "cronjobs"),
    "all": ("all",),
}
_ALIASES = {alias: kind for kind, aliases in KINDS.items() for alias in aliases}
SHORT = {kind: aliases[0] for kind, aliases in KINDS.items()}

# Kinds that are pods or own pods: their series carry the kind as a label.
WORKLOAD_KINDS = ("deployment", "statefulset", "daemonset", "replicaset", "replicationcontroller", "job", "cronjob",
                  "pod")
# What ``stat all`` shows, in Linkerd's order (StatAllResourceTypes, without TrafficSplit).
STAT_ALL = ("daemonset", "statefulset", "job", "deployment", "replicationcontroller", "pod", "service", "cronjob",
            "replicaset")


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """A kind and, optionally, one object of it; *namespace* None means every namespace."""

    kind: str
    name: str | None = None
    namespace: str | None = None

    @property
    def label(self) -> str:
        """The Prometheus label naming objects of this kind (Linkerd's)."""
        return "k8s_job" if self.kind == "job" else self.kind

    def __str__(self) -> str:
        return f"{SHORT[self.kind]}/{self.name}" if self.name else SHORT[self.kind]


def kind_of(text: str) -> str:
    kind = _ALIASES.get(text.lower())
    if kind is None:
        raise UsageError(f"unknown resource type {text!r} (known: {', '.join(k for k in KINDS)})")
    return kind


def parse(args: list[str] | tuple[str, ...], namespace: str | None) -> list[Resource]:
    """``TYPE``, ``TYPE NAME...`` or ``TYPE/NAME...`` (as kubectl and linkerd take them)."""
    if not args:
        raise UsageError("no resource given: expected e.g. 'deploy', 'deploy/web' or 'deploy web'")
    if all("/" in a for a in args):
        out = []
        for arg in args:
            kind, _, name = arg.partition("/")
            if not name:
                raise UsageError(f"resource {arg!r}: expected TYPE/NAME")
            out.append(Resource(kind_of(kind), name, namespace))
        return out
    if any("/" in a for a in args):
        raise UsageError(f"mixed TYPE/NAME and TYPE NAME arguments: {' '.join(args)}")
    kind = kind_of(args[0])
    if len(args) == 1:
        return [Resource(kind, None, namespace)]
    if kind == "all":
        raise UsageError("'all' takes no names")
    return [Resource(kind, name, namespace) for name in args[1:]]


def parse_one(text: str, namespace: str | None, *, flag: str) -> Resource:
    """The value of ``--to``/``--from``: ``TYPE/NAME`` or ``TYPE``."""
    kind, _, name = text.partition("/")
    try:
        res = Resource(kind_of(kind), name or None, namespace)
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if res.kind == "all":
        raise UsageError(f"{flag}: resource type 'all' is not supported as a filter")
    return res


def parse_window(text: str, *, minimum_s: float = 15.0) -> float:
    """``--time-window``: a Go duration (``30s``, ``1m``, ``1h30m``) of at least *minimum_s* seconds.

    Linkerd's metrics API refuses windows shorter than its Prometheus' scrape
    interval allows; 15s (a Prometheus default interval) is the floor it documents.
    """
    from meshctl_proxy.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--time-window: {exc}") from None
    if seconds < minimum_s:
        raise UsageError(f"--time-window: {text!r} is shorter than the minimum of {minimum_s:g}s")
    return seconds
