"""The decision for one pod template: what meshctl adds, and what it removes.

Pure functions over plain dicts; the admission webhook calls :func:`inject_pod`
with the pod under review, the CLI with each workload's ``spec.template``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from typing import Any

from meshctl_proxy import config as proxy_config
from meshctl.inject._options import (
    INJECT_ANNOTATION,
    LINKERD_INJECT_ANNOTATION,
    PROXY_VERSION_ANNOTATION,
    TRUST_ROOT_ANNOTATION,
    InjectOptions,
    OptionsError,
    inject_disabled_by,
    read_annotations,
    resolve_port_names,
)
from meshctl.inject._patch import Addition, InsertItems, Path, PodPatch, Remove, SetEntries

INIT_CONTAINER = "meshctl-init"
PROXY_CONTAINER = "meshctl-proxy"
IDENTITY_VOLUME = "meshctl-identity-end-entity"
TOKEN_VOLUME = "meshctl-identity-token"
CONTROL_PLANE_NS_LABEL = "meshctl.io/control-plane-ns"
WORKLOAD_NS_LABEL = "meshctl.io/workload-ns"
PROXY_KIND_LABEL_PREFIX = "meshctl.io/proxy-"  # meshctl.io/proxy-deployment: web, as linkerd.io/proxy-deployment
# Annotations that mark a pod meshed; uninject removes exactly these.  The config.meshctl.io/*
# annotations are configuration, the user's once written: inject and uninject keep them, as
# linkerd's keep config.linkerd.io/* (its uninject removes only linkerd.io/* keys).
OWN_ANNOTATIONS = (INJECT_ANNOTATION, PROXY_VERSION_ANNOTATION, TRUST_ROOT_ANNOTATION)

# Sidecars of other meshes: two proxies would both claim the pod's traffic with
# iptables.  Linkerd's inject refuses the same way ("pods do not have a 3rd party
# proxy or initContainer already injected").
OTHER_MESH_CONTAINERS = {
    "istio-proxy": "Istio",
    "istio-init": "Istio",
    "istio-validation": "Istio",
    "linkerd-proxy": "Linkerd",
    "linkerd-init": "Linkerd",
    "linkerd-network-validator": "Linkerd",
    "consul-dataplane": "Consul",
    "envoy-sidecar": "Consul",
    "kuma-sidecar": "Kuma",
    "kuma-init": "Kuma",
}

# Containers of the sidecar: the resources the init step needs are Linkerd's proxy-init defaults.
INIT_RESOURCES = {"limits": {"cpu": "100m", "memory": "20Mi"}, "requests": {"cpu": "10m", "memory": "10Mi"}}
TOKEN_EXPIRATION_SECONDS = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """Who owns the pod template: used for labels, metrics and report lines."""

    kind: str = "pod"  # lower case, as linkerd reports ("deployment", "cronjob")
    name: str = ""
    namespace: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PodResult:
    """The verdict for one pod template and the patch that carries it out."""

    verdict: str  # "injected", "uninjected", "skipped" or "refused"
    patch: PodPatch = PodPatch()
    reason: str = ""  # why skipped or refused
    warnings: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()  # checks that passed (the √ lines of --verbose)


class InjectError(ValueError):
    """The options cannot produce a valid sidecar (e.g. --manual without trust anchors)."""


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _named(items: Any) -> list[tuple[int, str]]:
    return [(i, c.get("name")) for i, c in enumerate(_list(items)) if isinstance(c, dict)]


# --- checks ---------------------------------------------------------------------------


def _other_mesh(spec: dict) -> str | None:
    for field in ("initContainers", "containers"):
        for _, name in _named(spec.get(field)):
            if name in OTHER_MESH_CONTAINERS:
                return f"pods already have {OTHER_MESH_CONTAINERS[name]}'s sidecar (container \"{name}\")"
    return None


def _udp_warnings(spec: dict) -> list[str]:
    out = []
    for field in ("initContainers", "containers"):
        for c in _list(spec.get(field)):
            if not isinstance(c, dict) or c.get("name") in (INIT_CONTAINER, PROXY_CONTAINER):
                continue
            for p in _list(c.get("ports")):
                if isinstance(p, dict) and str(p.get("protocol", "TCP")).upper() == "UDP":
                    out.append(f"container \"{c.get('name')}\" port {p.get('containerPort')}/UDP is not meshed "
                               "(the proxy handles TCP only)")
    return out


# --- what meshctl added before -----------------------------------------------------------


def _own_annotation(key: str, value: Any) -> bool:
    if key == INJECT_ANNOTATION:
        return value != "disabled"  # the user's opt-out is theirs, not ours
    return key in OWN_ANNOTATIONS


def _opt_in(key: str) -> bool:
    return key == INJECT_ANNOTATION


def _own_label(key: str) -> bool:
    return key in (CONTROL_PLANE_NS_LABEL, WORKLOAD_NS_LABEL) or key.startswith(PROXY_KIND_LABEL_PREFIX)


def own_paths(pod: dict) -> list[Path]:
    """Paths of everything meshctl adds (annotations, labels, containers, volumes) found in *pod*."""
    paths: list[Path] = []
    meta = _dict(pod.get("metadata"))
    paths += [("metadata", "annotations", k) for k, v in _dict(meta.get("annotations")).items() if _own_annotation(k, v)]
    paths += [("metadata", "labels", k) for k in _dict(meta.get("labels")) if _own_label(k)]
    spec = _dict(pod.get("spec"))
    paths += [("spec", "initContainers", i) for i, n in _named(spec.get("initContainers"))
              if n in (INIT_CONTAINER, PROXY_CONTAINER)]
    paths += [("spec", "containers", i) for i, n in _named(spec.get("containers")) if n == PROXY_CONTAINER]
    paths += [("spec", "volumes", i) for i, n in _named(spec.get("volumes")) if n in (IDENTITY_VOLUME, TOKEN_VOLUME)]
    return paths


# Containers that meshctl may have created and leaves out when they end up empty,
# as Kubernetes does for empty maps and lists (omitempty).
_PRUNABLE: tuple[Path, ...] = (("metadata", "annotations"), ("metadata", "labels"),
                               ("spec", "initContainers"), ("spec", "volumes"))


def _prune(pod: dict, paths: list[Path], keep: set[Path]) -> tuple[Remove, ...]:
    """Removals for *paths*, replacing a container's last entries by the container itself."""
    paths = list(paths)
    for cpath in _PRUNABLE:
        container = pod.get(cpath[0], {})
        container = container.get(cpath[1]) if isinstance(container, dict) else None
        inside = [p for p in paths if p[:2] == cpath]
        if inside and container is not None and len(inside) == len(container) and cpath not in keep:
            paths = [p for p in paths if p[:2] != cpath] + [cpath]
    meta = pod.get("metadata")
    if isinstance(meta, dict) and meta and ("metadata",) not in keep:
        inside = {p[1] for p in paths if p[0] == "metadata" and len(p) == 2}
        if inside == set(meta):
            paths = [p for p in paths if p[0] != "metadata"] + [("metadata",)]
    return tuple(Remove(p) for p in paths)


def _keep(additions: tuple[Addition, ...]) -> set[Path]:
    return {op.path[:i] for op in additions for i in range(1, len(op.path) + 1)}


# --- inject ------------------------------------------------------------------------------


def inject_pod(pod: dict, options: InjectOptions, workload: Workload = Workload(), *,
               keep_opt_in: bool = False) -> PodResult:
    """Decide how to mesh one pod (or pod template): refuse, skip, or a patch.

    Whatever meshctl added before is removed first, so injecting twice gives
    the same result as injecting once.  ``keep_opt_in=True`` (the admission
    webhook) leaves ``meshctl.io/inject`` and ``config.meshctl.io/*`` in place:
    there they are the user's request, not something inject wrote.
    """
    spec = _dict(pod.get("spec"))
    if spec.get("hostNetwork") is True:
        return PodResult("refused", reason="pods use host networking (hostNetwork: true): "
                                           "the proxy's iptables rules would capture the node's traffic")
    other = _other_mesh(spec)
    if other:
        return PodResult("refused", reason=other)
    checks = ["pods do not use host networking", "pods do not have another mesh's sidecar"]
    annotations = _dict(_dict(pod.get("metadata")).get("annotations"))
    disabled_by = inject_disabled_by(annotations)
    if disabled_by == INJECT_ANNOTATION:
        return PodResult("skipped", reason=f"pods are annotated {INJECT_ANNOTATION}: disabled", checks=tuple(checks))
    if disabled_by is not None:
        return PodResult("skipped", reason=f"pods are annotated {disabled_by}: disabled (Linkerd's annotation, "
                                           f"read as {INJECT_ANNOTATION}: disabled)", checks=tuple(checks))
    checks.append("pods are not annotated to disable injection")  # linkerd's words
    warnings = _udp_warnings(spec)
    if not warnings:
        checks.append("pods do not use UDP ports")
    if annotations.get(LINKERD_INJECT_ANNOTATION) == "enabled":
        warnings.append(f"{LINKERD_INJECT_ANNOTATION}: enabled is Linkerd's: meshctl meshes by {INJECT_ANNOTATION}, "
                        "and Linkerd's injector, if installed, would add its proxy too (remove the annotation)")
    read = read_annotations(annotations)
    alias_checks, alias_warnings = read.notes()
    checks += alias_checks
    warnings += alias_warnings
    try:
        # The pod's own configuration annotations apply under the flags given, as in the webhook.
        options = options.under_annotations(annotations)
    except OptionsError as exc:
        return PodResult("refused", reason=str(exc), warnings=tuple(warnings), checks=tuple(checks))
    old = own_paths(pod)
    if keep_opt_in:
        old = [p for p in old if not (p[:2] == ("metadata", "annotations") and _opt_in(p[2]))]
    base = PodPatch(removals=tuple(Remove(p) for p in old)).apply(pod) if old else pod
    if options.manual:
        opaque = options.get("opaque-ports")
        if opaque:
            resolved, missing = resolve_port_names(opaque, _named_ports(spec))
            warnings += [f"opaque port {name!r}: no container port has that name (ignored)" for name in missing]
            overrides = {k: v for k, v in options.overrides.items() if k != "opaque-ports"}
            options = dataclasses.replace(options, overrides={**overrides, **({"opaque-ports": resolved} if resolved else {})})
        additions = _manual_additions(base, options, workload)
    else:
        additions = _annotation_additions(options, annotations)
    old, additions = _leave_unchanged(pod, old, additions)
    patch = PodPatch(_prune(pod, old, _keep(additions)), additions)
    return PodResult("injected", patch, warnings=tuple(warnings), checks=tuple(checks))


def _leave_unchanged(pod: dict, old: list[Path], additions: tuple[Addition, ...]):
    """Neither remove nor rewrite an annotation or label that already has the value to be set:
    its text (quoting, position) stays byte for byte, so injecting twice changes nothing."""
    same: set[Path] = set()
    kept_additions: list[Addition] = []
    for op in additions:
        if isinstance(op, SetEntries) and len(op.path) == 2 and op.path[0] == "metadata":
            current = _dict(_dict(pod.get("metadata")).get(op.path[1]))
            unchanged = {k for k, v in op.entries.items() if k in current and str(current[k]) == str(v)
                         and isinstance(current[k], str)}
            same |= {(*op.path, k) for k in unchanged}
            op = SetEntries(op.path, {k: v for k, v in op.entries.items() if k not in unchanged})
            if not op.entries:
                continue
        kept_additions.append(op)
    return [p for p in old if p not in same], tuple(kept_additions)


def _named_ports(spec: dict) -> dict[str, int]:
    """The containers' named ports (name -> containerPort), as Linkerd resolves opaque port names."""
    named = {}
    for c in _list(spec.get("containers")):
        for p in _list(c.get("ports") if isinstance(c, dict) else None):
            if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("containerPort"), int):
                named.setdefault(p["name"], p["containerPort"])
    return named


def _annotation_additions(options: InjectOptions, annotations: dict) -> tuple[Addition, ...]:
    # Annotation mode: the admission webhook renders the sidecar in the cluster.
    entries = {INJECT_ANNOTATION: "enabled", **options.annotations_to_write(annotations)}
    return (SetEntries(("metadata", "annotations"), entries),)


def uninject_pod(pod: dict) -> PodResult:
    """Remove exactly what :func:`inject_pod` adds, in either mode."""
    paths = own_paths(pod)
    if not paths:
        return PodResult("skipped", reason="nothing meshctl added")
    return PodResult("uninjected", PodPatch(_prune(pod, paths, set())))


# --- --manual: the full sidecar ---------------------------------------------------------------


def _env(field: str, value: str) -> dict:
    """One MESHCTL_PROXY_* variable, checked against the proxy's own definition."""
    setting = proxy_config.SETTINGS_BY_FIELD[field]
    try:
        setting.parse(value)
    except ValueError as exc:
        raise InjectError(f"{setting.env}: {exc}") from None
    return {"name": setting.env, "value": value}


def _env_from_field(field: str, path: str) -> dict:
    return {"name": proxy_config.SETTINGS_BY_FIELD[field].env,
            "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _inbound_ports(spec: dict) -> str:
    ports = set()
    for c in _list(spec.get("containers")):
        if isinstance(c, dict) and c.get("name") != PROXY_CONTAINER:
            for p in _list(c.get("ports")):
                if (isinstance(p, dict) and isinstance(p.get("containerPort"), int)
                        and str(p.get("protocol", "TCP")).upper() == "TCP"):
                    ports.add(p["containerPort"])
    return ",".join(str(p) for p in sorted(ports))


def proxy_env(pod: dict, options: InjectOptions, workload: Workload) -> list[dict]:
    """The proxy's environment in --manual mode.

    What is written: the pod's identity (downward API), the workload, the trust
    anchors and local identity name, the listen addresses and the destination
    and identity services (the pod's contract with iptables and the control
    plane, so a reader sees them), the application's ports, and every setting
    a flag changed.  Everything else keeps the default that
    ``meshctl_proxy.config.SETTINGS`` gives the proxy.
    """
    mesh = options.mesh
    ns, domain, trust = mesh.mesh_namespace, mesh.cluster_domain, mesh.trust_domain
    sa_var = proxy_config.SETTINGS_BY_FIELD["pod_service_account"].env
    ns_var = proxy_config.SETTINGS_BY_FIELD["pod_namespace"].env
    get = options.get
    env = []
    if "proxy-log-level" in options.overrides:
        env.append(_env("log_level", get("proxy-log-level")))
    if "proxy-log-format" in options.overrides:
        env.append(_env("log_format", get("proxy-log-format")))
    env += [
        _env_from_field("pod_name", "metadata.name"),
        _env_from_field("pod_namespace", "metadata.namespace"),
        _env_from_field("pod_service_account", "spec.serviceAccountName"),
    ]
    if workload.kind != "pod" and workload.name:
        env += [_env("workload_kind", workload.kind), _env("workload_name", workload.name)]
    env += [
        _env("inbound_listen_addr", f"0.0.0.0:{get('proxy-inbound-port')}"),
        _env("outbound_listen_addr", f"127.0.0.1:{get('proxy-outbound-port')}"),
        _env("admin_listen_addr", f"0.0.0.0:{get('proxy-admin-port')}"),
        _env("control_listen_addr", f"0.0.0.0:{get('proxy-control-port')}"),
    ]
    inbound = _inbound_ports(_dict(pod.get("spec")))
    if inbound:
        env.append(_env("inbound_ports", inbound))
    if "opaque-ports" in options.overrides:
        env.append(_env("inbound_ports_disable_protocol_detection", get("opaque-ports")))
    if "require-identity-on-inbound-ports" in options.overrides:
        env.append(_env("inbound_ports_require_identity", get("require-identity-on-inbound-ports")))
    if "default-inbound-policy" in options.overrides:
        env.append(_env("default_inbound_policy", get("default-inbound-policy")))
    if mesh.cluster_networks != proxy_config.SETTINGS_BY_FIELD["cluster_networks"].default:
        env.append(_env("cluster_networks", mesh.cluster_networks))
    env += [
        _env("destination_svc_addr", f"meshctl-dst.{ns}.svc.{domain}.:8086"),
        _env("destination_svc_name", f"meshctl-destination.{ns}.serviceaccount.identity.{ns}.{trust}"),
    ]
    if domain != "cluster.local":
        env.append(_env("destination_profile_suffixes", f"svc.{domain}."))
    env += [
        _env("identity_svc_addr", f"meshctl-identity.{ns}.svc.{domain}.:8080"),
        _env("identity_svc_name", f"meshctl-identity.{ns}.serviceaccount.identity.{ns}.{trust}"),
        _env("identity_trust_anchors", mesh.trust_anchors_pem),
        # Kubernetes expands $(VAR) from variables defined earlier in the list.
        _env("identity_local_name", f"$({sa_var}).$({ns_var}).serviceaccount.identity.{ns}.{trust}"),
        # Who may tap this proxy (the control port): the viz extension's tap service, as
        # Linkerd's LINKERD2_PROXY_TAP_SVC_NAME; named with this mesh's namespace and trust domain.
        _env("tap_svc_name", f"tap.{proxy_config.VIZ_NAMESPACE}.serviceaccount.identity.{ns}.{trust}"),
    ]
    return env


def _proxy_container(pod: dict, options: InjectOptions, workload: Workload, *, native: bool) -> dict:
    get = options.get
    admin = int(get("proxy-admin-port"))
    resources: dict[str, dict[str, str]] = {}
    for flag, kind, res in (("proxy-cpu-limit", "limits", "cpu"), ("proxy-memory-limit", "limits", "memory"),
                            ("proxy-cpu-request", "requests", "cpu"), ("proxy-memory-request", "requests", "memory")):
        if get(flag):
            resources.setdefault(kind, {})[res] = get(flag)
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": _image(options),
        "imagePullPolicy": get("image-pull-policy"),
        "command": ["meshctl-proxy"],
        "env": proxy_env(pod, options, workload),
        "ports": [
            {"containerPort": int(get("proxy-inbound-port")), "name": "meshctl-proxy"},
            {"containerPort": admin, "name": "meshctl-admin"},
        ],
        "livenessProbe": {"httpGet": {"path": "/live", "port": admin}, "initialDelaySeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": admin}, "initialDelaySeconds": 2},
    }
    if native:
        # A native sidecar (KEP-753): started before the app's containers, and the
        # app's containers start only once the startup probe passes.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {"httpGet": {"path": "/ready", "port": admin},
                                     "periodSeconds": 1, "failureThreshold": 120}
    if resources:
        container["resources"] = resources
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": int(get("proxy-uid")),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["volumeMounts"] = [
        {"mountPath": proxy_config.IDENTITY_DIR, "name": IDENTITY_VOLUME},
        {"mountPath": posixpath.dirname(proxy_config.IDENTITY_TOKEN_FILE), "name": TOKEN_VOLUME, "readOnly": True},
    ]
    return container


def _ports_list(raw: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip()) if raw else ()


def _init_container(options: InjectOptions) -> dict:
    get = options.get
    init = proxy_config.InitConfig(
        inbound_port=int(get("proxy-inbound-port")),
        outbound_port=int(get("proxy-outbound-port")),
        proxy_uid=int(get("proxy-uid")),
        # The proxy's own control and admin ports are never redirected.
        inbound_ports_to_ignore=(get("proxy-control-port"), get("proxy-admin-port"))
        + _ports_list(get("skip-inbound-ports")),
        outbound_ports_to_ignore=_ports_list(get("skip-outbound-ports")),
    )
    return {
        "name": INIT_CONTAINER,
        "image": _image(options),
        "imagePullPolicy": get("image-pull-policy"),
        "command": ["meshctl-proxy", "init"],
        "args": init.to_args(),
        "resources": INIT_RESOURCES,
        "securityContext": {
            # iptables needs root with NET_ADMIN and NET_RAW, and nothing more.
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _image(options: InjectOptions) -> str:
    image = options.get("proxy-image") or options.mesh.proxy_image
    version = options.get("proxy-version") or options.mesh.proxy_version
    return f"{image}:{version}"


def _volumes() -> tuple[dict, dict]:
    return (
        {"name": IDENTITY_VOLUME, "emptyDir": {"medium": "Memory"}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": proxy_config.IDENTITY_AUDIENCE,
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "path": posixpath.basename(proxy_config.IDENTITY_TOKEN_FILE),
        }}]}},
    )


def trust_root_sha256(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


def _manual_additions(pod: dict, options: InjectOptions, workload: Workload) -> tuple[Addition, ...]:
    mesh = options.mesh
    if "BEGIN CERTIFICATE" not in mesh.trust_anchors_pem:
        raise InjectError("--manual needs the mesh's trust anchors (PEM certificates): none were given")
    native = options.get("native-sidecar") == "true"
    annotations = {PROXY_VERSION_ANNOTATION: options.get("proxy-version") or mesh.proxy_version,
                   TRUST_ROOT_ANNOTATION: trust_root_sha256(mesh.trust_anchors_pem)}
    labels = {CONTROL_PLANE_NS_LABEL: mesh.mesh_namespace}
    if workload.kind != "pod" and workload.name:
        labels[PROXY_KIND_LABEL_PREFIX + workload.kind] = workload.name
    labels[WORKLOAD_NS_LABEL] = workload.namespace or "default"
    proxy = _proxy_container(pod, options, workload, native=native)
    init = _init_container(options)
    ops: list[Addition] = [
        SetEntries(("metadata", "annotations"), annotations),
        SetEntries(("metadata", "labels"), labels),
    ]
    if native:
        ops.append(InsertItems(("spec", "initContainers"), 0, (init, proxy)))
    else:
        # Without native sidecars the proxy goes first in containers, as Linkerd puts it.
        ops += [InsertItems(("spec", "initContainers"), 0, (init,)), InsertItems(("spec", "containers"), 0, (proxy,))]
    ops.append(InsertItems(("spec", "volumes"), None, _volumes()))
    return tuple(ops)


__all__ = ["InjectError", "OptionsError", "PodResult", "Workload", "inject_pod", "uninject_pod", "own_paths",
           "proxy_env", "trust_root_sha256"]
