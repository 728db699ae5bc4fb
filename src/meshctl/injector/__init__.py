"""The proxy-injector: a mutating admission webhook meshing pods at creation.

:func:`review` is the pure core: an AdmissionReview v1 request and the pod's
Namespace in, the AdmissionReview response out, with a JSONPatch made by the
same inject core as ``meshctl inject --manual`` (:func:`meshctl.inject.inject_pod`).
:mod:`meshctl.injector.server` is the HTTPS shell the API server calls.

Rules (Linkerd's proxy-injector):

- a pod is meshed when it, or else its namespace, is annotated
  ``meshctl.io/inject: enabled``; the pod's ``disabled`` wins over the namespace,
  and so does Linkerd's ``linkerd.io/inject: disabled`` (docs/linkerd-differences.md);
- ``config.meshctl.io/<flag>`` annotations of the namespace are inherited,
  the pod's own win; Linkerd's ``config.linkerd.io/*`` are read as their meshctl
  equivalents (``meshctl.inject.LINKERD_CONFIG_ALIASES``), meshctl's own winning;
- the webhook never blocks a pod because of its own failure: any error
  admits the pod unchanged, with a warning the user sees and a log line.
"""

from __future__ import annotations

import base64
import json
import logging

from meshctl.meshconfig import MeshConfig

log = logging.getLogger("meshctl.injector")

INJECT_ANNOTATION = "meshctl.io/inject"
CONFIG_PREFIX = "config.meshctl.io/"


def _annotations(obj: dict | None) -> dict:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _workload(pod: dict, namespace: str):
    from meshctl.inject import Workload

    meta = pod.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        return Workload("pod", meta.get("name") or meta.get("generateName", "").rstrip("-"), namespace)
    kind, name = owner.get("kind", "").lower(), owner.get("name", "")
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if kind == "replicaset" and template_hash and name.endswith("-" + template_hash):
        # The Deployment controller names ReplicaSets DEPLOYMENT-HASH: the owner's owner, without an API call.
        kind, name = "deployment", name[: -len(template_hash) - 1]
    return Workload(kind, name, namespace)


def wanted(pod: dict, namespace_obj: dict | None) -> bool:
    from meshctl.inject._options import inject_disabled_by

    annotations = _annotations(pod)
    pod_value = annotations.get(INJECT_ANNOTATION)
    if pod_value is not None:
        return pod_value == "enabled"
    if inject_disabled_by(annotations):  # linkerd.io/inject: disabled keeps the pod out
        return False
    return _annotations(namespace_obj).get(INJECT_ANNOTATION) == "enabled"


def config_annotations(pod: dict, namespace_obj: dict | None) -> dict[str, str]:
    """``config.meshctl.io/*`` annotations (Linkerd's read as their aliases): the namespace's,
    overridden by the pod's."""
    from meshctl.inject._options import read_annotations

    merged = {}
    for source in (_annotations(namespace_obj), _annotations(pod)):
        merged.update({CONFIG_PREFIX + name: value for name, value in read_annotations(source).values.items()})
    return merged


def _response(uid: str, *, patch: list | None = None, warnings: list[str] | None = None) -> dict:
    response = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def review(admission_review: dict, *, namespace_obj: dict | None, mesh: MeshConfig) -> dict:
    """The AdmissionReview response for *admission_review* (never raises)."""
    request = (admission_review or {}).get("request") or {}
    uid = request.get("uid", "")
    try:
        return _review(request, uid, namespace_obj, mesh)
    except Exception as exc:  # never fail the pod because of ourselves: admit it unchanged
        log.error("admitting %s/%s unchanged after an injector error: %s", request.get("namespace"),
                  (request.get("object") or {}).get("metadata", {}).get("generateName") or request.get("name"), exc)
        return _response(uid, warnings=[f"meshctl proxy-injector: pod not meshed: {exc}"])


def _review(request: dict, uid: str, namespace_obj: dict | None, mesh: MeshConfig) -> dict:
    from meshctl.inject import InjectOptions, inject_pod

    kind = request.get("kind") or {}
    if kind.get("kind") != "Pod" or kind.get("group", "") != "" or request.get("operation") != "CREATE":
        return _response(uid)
    pod = request.get("object") or {}
    if not wanted(pod, namespace_obj):
        return _response(uid)
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace", "")
    options = InjectOptions.from_annotations(config_annotations(pod, namespace_obj), mesh=mesh)
    # keep_opt_in: the pod's meshctl.io/inject and config annotations are the user's request, kept as given.
    result = inject_pod(pod, options, _workload(pod, namespace), keep_opt_in=True)
    if result.verdict != "injected":
        log.info("pod in %s not meshed: %s", namespace, result.reason)
        return _response(uid, warnings=[f"meshctl proxy-injector: pod not meshed: {result.reason}"]
                         if result.verdict == "refused" else None)
    ops = result.patch.json_patch(pod, prefix="")
    return _response(uid, patch=ops, warnings=list(result.warnings) or None)
