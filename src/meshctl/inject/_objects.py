"""Kubernetes objects: which kinds carry a pod template, and what happens to the others."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshctl.inject._options import CONFIG_PREFIX, INJECT_ANNOTATION, InjectOptions, resolve_port_names
from meshctl.inject._patch import Path, PodPatch, SetEntries
from meshctl.inject._pod import Workload, _keep, _leave_unchanged, _prune, inject_pod, own_paths, uninject_pod

# Where each kind keeps its pod template (Linkerd meshes the same kinds).
TEMPLATE_PATHS: dict[str, Path] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


# Kinds inject acts on (pod templates, Namespaces, Services): an input with none of them gets a warning.
SUPPORTED_KINDS = frozenset(k.lower() for k in TEMPLATE_PATHS) | {"namespace", "service"}
MISSING_KIND = 'document missing "kind" field, skipped'


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What inject or uninject did to one Kubernetes object (one report line)."""

    kind: str  # lower case, as linkerd reports it
    name: str
    verdict: str  # "injected", "annotated", "uninjected", "skipped" or "refused"
    target: Path = ()  # the patch applies to the mapping at this path of the object
    patch: PodPatch = PodPatch()
    reason: str = ""
    warnings: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    where: str = ""  # source and document number, for documents that are no Kubernetes object

    @property
    def label(self) -> str:
        if not self.kind:
            return self.where or "document"
        return f'{self.kind} "{self.name}"'


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _name(obj: dict) -> str:
    meta = _meta(obj)
    return str(meta.get("name") or meta.get("generateName") or "")


def _get(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def is_list(obj: Any) -> bool:
    """``kind: List`` (what ``kubectl get -o yaml`` prints) and typed lists (``DeploymentList``)."""
    return (isinstance(obj, dict) and isinstance(obj.get("kind"), str) and obj["kind"].endswith("List")
            and isinstance(obj.get("items"), list))


def _annotation_patch(obj: dict, entries: dict[str, str]) -> PodPatch:
    old = [p for p in own_paths(obj) if p[:2] == ("metadata", "annotations")]
    additions = (SetEntries(("metadata", "annotations"), entries),) if entries else ()
    old, additions = _leave_unchanged(obj, old, additions)
    return PodPatch(_prune(obj, old, _keep(additions)), additions)


def _decide(obj: dict, on_pod, on_other) -> Outcome:
    """Route an object to *on_pod* (pod template holders) or *on_other*, with its report identity."""
    kind = str(obj.get("kind") or "")
    name = _name(obj)
    if not kind:
        # What linkerd reports for a document that is no Kubernetes object (a swagger file in a folder).
        return Outcome("", name, "skipped", reason=MISSING_KIND)
    label_kind = kind.lower()
    path = TEMPLATE_PATHS.get(kind)
    if path is None:
        return on_other(kind, label_kind, name)
    template = _get(obj, path)
    if not isinstance(template, dict):
        return Outcome(label_kind, name, "skipped", reason=f"no pod template at {'.'.join(path)}")
    result = on_pod(template, Workload(label_kind, name, _meta(obj).get("namespace")))
    return Outcome(label_kind, name, result.verdict, path, result.patch, result.reason, result.warnings,
                   result.checks)


def inject_object(obj: dict, options: InjectOptions) -> Outcome:
    """Inject one object (not a List: the caller handles each item)."""

    def other(kind: str, label_kind: str, name: str) -> Outcome:
        annotations = _get(obj, ("metadata", "annotations"))
        annotations = annotations if isinstance(annotations, dict) else {}
        if kind == "Namespace":
            entries = {INJECT_ANNOTATION: "enabled", **options.annotations_to_write(annotations)}
            return Outcome(label_kind, name, "annotated", (), _annotation_patch(obj, entries))
        if kind == "Service" and "opaque-ports" in options.overrides:
            # Opaque ports concern the service's clients too: Linkerd annotates services with them.
            # Port names are the Service's own port names, resolved to their numbers here.
            ports = _get(obj, ("spec", "ports"))
            named = {p["name"]: p["port"] for p in (ports if isinstance(ports, list) else [])
                     if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("port"), int)}
            value, missing = resolve_port_names(options.overrides["opaque-ports"], named)
            warnings = tuple(f"opaque port {n!r}: the service has no port of that name (ignored)" for n in missing)
            key = CONFIG_PREFIX + "opaque-ports"
            if not value:
                return Outcome(label_kind, name, "skipped", warnings=warnings)
            entries = {key: value} if str(annotations.get(key)) != value else {}
            return Outcome(label_kind, name, "annotated", (), _annotation_patch(obj, entries), warnings=warnings)
        return Outcome(label_kind, name, "skipped")

    return _decide(obj, lambda pod, workload: inject_pod(pod, options, workload), other)


def uninject_object(obj: dict) -> Outcome:
    """Remove what inject added to one object (not a List)."""

    def other(kind: str, label_kind: str, name: str) -> Outcome:
        old = [p for p in own_paths(obj) if p[:2] == ("metadata", "annotations")]
        if kind in ("Namespace", "Service") and old:
            return Outcome(label_kind, name, "uninjected", (), PodPatch(_prune(obj, old, set())))
        return Outcome(label_kind, name, "skipped")

    return _decide(obj, lambda pod, workload: uninject_pod(pod), other)
