"""The API server's mutating admission chain, as kube-apiserver runs it on create.

For each MutatingWebhookConfiguration webhook whose rules, namespaceSelector
and objectSelector match, POST an AdmissionReview v1 over HTTPS to its
Service (found through ``FakeKube.service_endpoints``), trusting only its
caBundle and checking the certificate for ``SERVICE.NAMESPACE.svc``, within
``timeoutSeconds``; apply the JSONPatch it returns.  A webhook that cannot be
called fails the request under ``failurePolicy: Fail`` (the v1 default) and
is skipped under ``Ignore``; ``allowed: false`` refuses the request.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid

from fakekube import patches


def _expressions_match(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _rule_matches(rule: dict, rt, operation: str) -> bool:
    def has(values, value):
        return "*" in values or value in values

    return (has(rule.get("operations") or [], operation) and has(rule.get("apiGroups") or [], rt.group)
            and has(rule.get("apiVersions") or [], rt.version) and has(rule.get("resources") or [], rt.plural)
            and rule.get("scope", "*") in ("*", "Namespaced" if rt.namespaced else "Cluster"))


def mutate(kube, rt, ns: str, obj: dict, user) -> dict:
    from fakekube.server import ApiError

    with kube._lock:
        configs = [c for c in kube._objects.get(("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
                                                 {}).values()]
        ns_obj = kube._objects.get(("", "namespaces"), {}).get(("", ns))
    ns_labels = dict((ns_obj or {}).get("metadata", {}).get("labels") or {})
    if ns and ns_obj is not None:
        ns_labels.setdefault("kubernetes.io/metadata.name", ns)
    for config in sorted(configs, key=lambda c: c["metadata"]["name"]):
        for hook in config.get("webhooks") or []:
            if not any(_rule_matches(r, rt, "CREATE") for r in hook.get("rules") or []):
                continue
            if rt.namespaced and not _expressions_match(hook.get("namespaceSelector"), ns_labels):
                continue
            if not _expressions_match(hook.get("objectSelector"), (obj.get("metadata") or {}).get("labels") or {}):
                continue
            try:
                response = _call(kube, hook, rt, ns, obj, user)
            except Exception as exc:
                if hook.get("failurePolicy", "Fail") == "Ignore":
                    continue
                raise ApiError(500, "InternalError", f'Internal error occurred: failed calling webhook '
                                                     f'"{hook["name"]}": {exc}') from None
            if not response.get("allowed"):
                st = response.get("status") or {}
                raise ApiError(st.get("code", 403), st.get("reason", "Forbidden"),
                               f'admission webhook "{hook["name"]}" denied the request: {st.get("message", "")}')
            if response.get("patch"):
                if response.get("patchType") != "JSONPatch":
                    raise ApiError(500, "InternalError", f'webhook "{hook["name"]}" returned an unknown patchType')
                obj = patches.json_patch(obj, json.loads(base64.b64decode(response["patch"])))
    return obj


def _call(kube, hook: dict, rt, ns: str, obj: dict, user) -> dict:
    import httpx

    svc = (hook.get("clientConfig") or {}).get("service")
    if not svc:
        raise ValueError("only service webhooks are supported by the fake")
    port = svc.get("port", 443)
    target = kube.service_endpoints.get((svc["namespace"], svc["name"], port))
    if target is None:
        raise ConnectionError(f'failed to call webhook: Post "https://{svc["name"]}.{svc["namespace"]}.svc:{port}'
                              f'{svc.get("path", "/")}": no endpoints available for service "{svc["name"]}"')
    ca = base64.b64decode(hook["clientConfig"].get("caBundle", "")).decode()
    ctx = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "resource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
        "requestKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "requestResource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
        "namespace": ns, "operation": "CREATE", "userInfo": {"username": user.username, "groups": list(user.groups)},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}
    with httpx.Client(verify=ctx, timeout=hook.get("timeoutSeconds", 10)) as client:
        resp = client.post(f"https://{target[0]}:{target[1]}{svc.get('path', '/')}", json=review,
                           extensions={"sni_hostname": f"{svc['name']}.{svc['namespace']}.svc"})
    resp.raise_for_status()
    answer = resp.json()
    response = answer.get("response") or {}
    if response.get("uid") != review["request"]["uid"]:
        raise ValueError("the webhook answered with another uid")
    return response
