"""The resource types the fake API server serves, as Kubernetes 1.31 names them.

Each entry mirrors one row of ``kubectl api-resources``: group, version,
plural, kind, whether it is namespaced, its verbs and whether it has a
``status`` subresource (which makes the main endpoint ignore status changes,
as the real server does).  CustomResourceDefinitions add rows at run time.
"""

from __future__ import annotations

import dataclasses

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    builtin: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def discovery_entry(self) -> dict:
        entry = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


def _t(group, version, plural, kind, namespaced, **kw) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, **kw)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _t("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True,
       verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
    _t("", "v1", "nodes", "Node", False, short_names=("no",), status_subresource=True),
    _t("", "v1", "pods", "Pod", True, short_names=("po",), status_subresource=True),
    _t("", "v1", "services", "Service", True, short_names=("svc",), status_subresource=True,
       verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")),
    _t("", "v1", "endpoints", "Endpoints", True, short_names=("ep",)),
    _t("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    _t("", "v1", "secrets", "Secret", True),
    _t("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    _t("", "v1", "events", "Event", True, short_names=("ev",)),
    _t("apps", "v1", "deployments", "Deployment", True, short_names=("deploy",), status_subresource=True),
    _t("apps", "v1", "replicasets", "ReplicaSet", True, short_names=("rs",), status_subresource=True),
    _t("apps", "v1", "statefulsets", "StatefulSet", True, short_names=("sts",), status_subresource=True),
    _t("apps", "v1", "daemonsets", "DaemonSet", True, short_names=("ds",), status_subresource=True),
    _t("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _t("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False),
    _t("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", False),
    _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
       short_names=("crd", "crds"), status_subresource=True),
    _t("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, short_names=("pdb",),
       status_subresource=True),
    _t("coordination.k8s.io", "v1", "leases", "Lease", True),
    _t("apiregistration.k8s.io", "v1", "apiservices", "APIService", False, status_subresource=True),
    _t("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=CREATE_ONLY),
    _t("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False, verbs=CREATE_ONLY),
    _t("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False, verbs=CREATE_ONLY),
)

# Groups in the order the real server lists them in /apis (core first, then
# by priority); the fake keeps insertion order, which is what clients see.
PREFERRED_VERSIONS = {t.group: t.version for t in BUILTIN_TYPES}


def crd_types(crd: dict) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    out = []
    for v in spec.get("versions", []):
        if not v.get("served"):
            continue
        out.append(ResourceType(
            group=spec["group"], version=v["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope") == "Namespaced", short_names=tuple(names.get("shortNames", ())),
            status_subresource="status" in (v.get("subresources") or {}), builtin=False,
        ))
    return out
