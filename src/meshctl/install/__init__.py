"""``meshctl install`` rendering: values in, Kubernetes objects out.  Pure.

The templates are ``manifests/control-plane/*.yaml`` (package data), filled
structurally (:mod:`meshctl.install.template`).  This module computes what
the templates are filled with: labels, commands, certificates, the
``meshctl-config`` data, HA settings; and meshes the control-plane pods with
the same inject core the CLI and the webhook use, since the webhook never
sees the mesh namespace (Linkerd's control plane is meshed the same way, in
its chart).

Everything that touches the cluster (does an install exist? what are the
current certificates for an upgrade?) is the CLI's job; it passes the answers
in as :class:`Existing`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
from importlib import resources

import yaml

from meshctl import __version__
from meshctl.errors import InputError
from meshctl.install import template
from meshctl.install.values import build_values, overrides
from meshctl.meshconfig import CONFIG_MAP_NAME, MeshConfig

COMPONENTS = ("destination", "identity", "proxy-injector")
CONTROL_PLANE_NS_LABEL = "meshctl.io/control-plane-ns"
COMPONENT_LABEL = "meshctl.io/control-plane-component"
INSTALL_VALUES_KEY = "installValues"  # extra meshctl-config key: the user's overrides, for `meshctl upgrade`
ISSUER_SECRET = "meshctl-identity-issuer"
WEBHOOK_SECRET = "meshctl-proxy-injector-k8s-tls"
WEBHOOK_CONFIG = "meshctl-proxy-injector-webhook-config"
WEBHOOK_SERVICE = "meshctl-proxy-injector"
CONTROLLER_UID = 2103  # Linkerd's controllers run as 2103, the proxy as 2102
WEBHOOK_CERT_LIFETIME = dt.timedelta(days=365)

# Ports of the controllers (Linkerd's numbers).
DESTINATION_PORT, IDENTITY_PORT, INJECTOR_PORT = 8086, 8080, 8443
ISSUER_DIR = "/var/run/meshctl/identity/issuer"
WEBHOOK_TLS_DIR = "/var/run/meshctl/tls"


@dataclasses.dataclass(frozen=True, slots=True)
class Existing:
    """What an upgrade keeps from the installed control plane."""

    trust_anchors_pem: str = ""
    issuer_crt_pem: str = ""
    issuer_key_pem: str = ""
    webhook_crt_pem: str = ""
    webhook_key_pem: str = ""
    webhook_ca_pem: str = ""
    values: dict | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Certificates:
    trust_anchors_pem: str
    issuer_crt_pem: str
    issuer_key_pem: str
    webhook_crt_pem: str
    webhook_key_pem: str
    webhook_ca_pem: str


def webhook_dns_name(namespace: str) -> str:
    """The name the API server verifies when it calls the webhook Service."""
    return f"{WEBHOOK_SERVICE}.{namespace}.svc"


def make_certificates(values: dict, *, namespace: str, now: dt.datetime | None = None,
                      sources: dict[str, str] | None = None) -> Certificates:
    """Certificates from *values* where given (validated), else new ones.

    *sources* names where a PEM value came from (``{"identity.issuerCrtPEM": "issuer.crt"}``),
    for the error messages; by default the value's own name.
    """
    sources = sources or {}
    from meshctl.identity import certs
    from meshctl_proxy.config import parse_duration

    ident = values["identity"]
    anchors, crt, key = ident["trustAnchorsPEM"], ident["issuerCrtPEM"], ident["issuerKeyPEM"]
    if crt or key or anchors:
        if not (crt and key and anchors):
            raise InputError("identity.trustAnchorsPEM, identity.issuerCrtPEM and identity.issuerKeyPEM go together "
                             "(--identity-trust-anchors-file, --identity-issuer-certificate-file, "
                             "--identity-issuer-key-file): give all three, or none to have them made")
        issuer = certs.load_issuer(cert_pem=crt, key_pem=key, trust_anchors_pem=anchors, now=now,
                                   cert_source=sources.get("identity.issuerCrtPEM", "identity.issuerCrtPEM"),
                                   key_source=sources.get("identity.issuerKeyPEM", "identity.issuerKeyPEM"),
                                   anchors_source=sources.get("identity.trustAnchorsPEM", "identity.trustAnchorsPEM"))
        crt, key = issuer.key_pair.cert_pem, issuer.key_pair.key_pem
    else:
        try:
            lifetime = dt.timedelta(seconds=parse_duration(str(ident["issuer"]["lifetime"])))
        except ValueError as exc:
            raise InputError(f"identity.issuer.lifetime: {exc}") from None
        anchor = certs.generate_trust_anchor(now=now)
        issuer_pair = certs.generate_issuer(anchor, lifetime=lifetime, now=now)
        anchors, crt, key = anchor.cert_pem, issuer_pair.cert_pem, issuer_pair.key_pem

    inj = values["proxyInjector"]
    w_crt, w_key, w_ca = inj["crtPEM"], inj["keyPEM"], inj["caBundlePEM"]
    if w_crt or w_key or w_ca:
        if not (w_crt and w_key and w_ca):
            raise InputError("proxyInjector.crtPEM, proxyInjector.keyPEM and proxyInjector.caBundlePEM go together")
        if not webhook_pair_matches(w_crt, w_key, w_ca):
            raise InputError("proxyInjector.crtPEM: not signed by proxyInjector.caBundlePEM, or not the "
                             "certificate of proxyInjector.keyPEM")
    else:
        # The webhook's own little CA: the API server trusts it through the
        # caBundle only; it has nothing to do with the mesh's trust anchor.
        ca = certs.generate_trust_anchor(common_name=f"webhook.{namespace}.meshctl.io", now=now)
        leaf_key = certs.new_private_key()
        leaf = certs.issue_leaf(ca, public_key=leaf_key.public_key(), dns_name=webhook_dns_name(namespace),
                                lifetime=WEBHOOK_CERT_LIFETIME, now=now)
        w_crt, w_key, w_ca = certs.cert_to_pem(leaf), certs.key_to_pem(leaf_key), ca.cert_pem
    return Certificates(anchors, crt, key, w_crt, w_key, w_ca)


def webhook_pair_matches(crt_pem: str, key_pem: str, ca_pem: str) -> bool:
    """Does the caBundle sign the serving certificate, and is the key the certificate's?"""
    from cryptography.exceptions import InvalidSignature

    from meshctl.identity import certs

    try:
        crt = certs.load_certificates(crt_pem, source="proxyInjector.crtPEM")[0]
        key = certs.load_private_key(key_pem, source="proxyInjector.keyPEM")
        cas = certs.load_certificates(ca_pem, source="proxyInjector.caBundlePEM")
    except InputError:
        return False
    if key.public_key().public_numbers() != crt.public_key().public_numbers():
        return False
    for ca in cas:
        try:
            crt.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _labels(namespace: str, component: str | None, version: str) -> dict:
    labels = {CONTROL_PLANE_NS_LABEL: namespace, "app.kubernetes.io/part-of": "meshctl",
              "app.kubernetes.io/version": version}
    if component:
        labels[COMPONENT_LABEL] = component
        labels["app.kubernetes.io/name"] = component
    return labels


def _anti_affinity(namespace: str, component: str) -> dict:
    # Linkerd's HA chart: never two replicas of a controller on one node.
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchExpressions": [
            {"key": COMPONENT_LABEL, "operator": "In", "values": [component]},
            {"key": CONTROL_PLANE_NS_LABEL, "operator": "In", "values": [namespace]},
        ]},
        "topologyKey": "kubernetes.io/hostname",
    }]}}


def _commands(values: dict, namespace: str) -> dict:
    # The controllers are meshctl's own `serve` commands, from the one image.
    root = ["meshctl", f"--mesh-namespace={namespace}"]
    return {
        "destination": [*root, "destination", "serve", "--kubernetes", f"--addr=0.0.0.0:{DESTINATION_PORT}"],
        "identity": [*root, "identity", "serve", f"--listen=0.0.0.0:{IDENTITY_PORT}",
                     f"--trust-anchors-file={ISSUER_DIR}/ca.crt", f"--issuer-certificate-file={ISSUER_DIR}/tls.crt",
                     f"--issuer-key-file={ISSUER_DIR}/tls.key", f"--trust-domain={values['identityTrustDomain']}"],
        "proxy-injector": [*root, "proxy-injector", "serve", f"--addr=0.0.0.0:{INJECTOR_PORT}",
                           f"--tls-dir={WEBHOOK_TLS_DIR}"],
    }


def mesh_config(values: dict, *, namespace: str, trust_anchors_pem: str) -> MeshConfig:
    return MeshConfig(mesh_namespace=namespace, proxy_image=values["image"]["name"],
                      proxy_version=values["image"]["version"] or __version__,
                      cluster_domain=values["clusterDomain"], trust_domain=values["identityTrustDomain"],
                      trust_anchors_pem=trust_anchors_pem, cluster_networks=values["clusterNetworks"])


def _context(values: dict, *, namespace: str, cert: Certificates) -> dict:
    version = values["image"]["version"] or __version__
    cfg = mesh_config(values, namespace=namespace, trust_anchors_pem=cert.trust_anchors_pem)
    config_data = cfg.to_data()
    config_data[INSTALL_VALUES_KEY] = json.dumps(overrides(values), sort_keys=True)
    anti = values["enablePodAntiAffinity"]
    return {
        "namespace": namespace,
        "image": values["image"],
        "controllerImage": f"{values['image']['name']}:{version}",
        "controllerReplicas": values["controllerReplicas"],
        "controllerResources": values["controllerResources"] or None,
        "controllerSecurityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": CONTROLLER_UID, "capabilities": {"drop": ["ALL"]},
        },
        "proxyInjector": values["proxyInjector"],
        "labels": {**{c: _labels(namespace, c, version) for c in COMPONENTS},
                   "config": _labels(namespace, None, version)},
        "selectors": {c: {COMPONENT_LABEL: c, CONTROL_PLANE_NS_LABEL: namespace} for c in COMPONENTS},
        "podLabels": {c: {COMPONENT_LABEL: c, CONTROL_PLANE_NS_LABEL: namespace, "app.kubernetes.io/name": c}
                      for c in COMPONENTS},
        "affinity": {c: _anti_affinity(namespace, c) if anti else None for c in COMPONENTS},
        "commands": _commands(values, namespace),
        "meshConfig": config_data,
        "b64": {"issuerCrt": _b64(cert.issuer_crt_pem), "issuerKey": _b64(cert.issuer_key_pem),
                "trustAnchors": _b64(cert.trust_anchors_pem), "webhookCrt": _b64(cert.webhook_crt_pem),
                "webhookKey": _b64(cert.webhook_key_pem), "webhookCaBundle": _b64(cert.webhook_ca_pem)},
        "webhookCertSha256": hashlib.sha256(cert.webhook_crt_pem.encode()).hexdigest(),
        "webhookSkippedNamespaces": ["kube-system", namespace],
    }


def _templates() -> list[tuple[str, str]]:
    folder = resources.files("meshctl").joinpath("manifests/control-plane")
    return sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".yaml"))


def render_control_plane(values: dict, *, namespace: str, certificates: Certificates) -> list[dict]:
    """Every object of the control plane, in apply order."""
    ctx = _context(values, namespace=namespace, cert=certificates)
    objs: list[dict] = []
    for name, text in _templates():
        if name.endswith("-ha.yaml") and not values["enablePodDisruptionBudget"]:
            continue
        objs.extend(template.render(text, ctx, source=f"manifests/control-plane/{name}"))
    mesh_control_plane(objs, mesh_config(values, namespace=namespace,
                                         trust_anchors_pem=certificates.trust_anchors_pem), values)
    return objs


def mesh_control_plane(objs: list[dict], config: MeshConfig, values: dict) -> None:
    """Add the proxy to each control-plane Deployment, as ``inject --manual`` does.

    Done here because the webhook skips the mesh namespace.  The identity
    controller's proxy gets its certificate from identity on localhost, as
    Linkerd's identity pod's proxy does.
    """
    from meshctl import inject
    from meshctl_proxy.config import SETTINGS_BY_FIELD

    flags = {"proxy-log-level": values["proxy"]["logLevel"], "proxy-uid": str(values["proxy"]["uid"])}
    options = inject.InjectOptions.from_flags(flags, manual=True, mesh=config)
    identity_env = SETTINGS_BY_FIELD["identity_svc_addr"].env
    for obj in objs:
        if obj.get("kind") != "Deployment":
            continue
        meta = obj["metadata"]
        template = obj["spec"]["template"]
        result = inject.inject_pod(template, options, inject.Workload("deployment", meta["name"], meta["namespace"]))
        if result.verdict != "injected":  # a template bug: the control plane must be meshed
            raise AssertionError(f"cannot mesh {meta['name']}: {result.reason}")
        obj["spec"]["template"] = template = result.patch.apply(template)
        if meta["labels"].get(COMPONENT_LABEL) == "identity":
            for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
                for env in container.get("env") or []:
                    if env.get("name") == identity_env:
                        env["value"] = f"localhost.:{IDENTITY_PORT}"


def render_crds() -> list[dict]:
    folder = resources.files("meshctl").joinpath("manifests/crds")
    objs = []
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            objs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return objs


def install_values(*, ha: bool, files: list[str], sets: list[str], existing: Existing | None = None,
                   flags: dict[str, tuple[str, object]] | None = None) -> dict:
    """Values for an install (no *existing*) or an upgrade (certificates and stored values kept).

    *flags*: values set by the command's own flags, ``{dotted path: (flag, value)}``.
    """
    values = build_values(ha=ha, files=files, sets=sets, stored=existing.values if existing else None, flags=flags)
    if existing is not None:
        ident, inj = values["identity"], values["proxyInjector"]
        if not ident["issuerCrtPEM"] and existing.issuer_crt_pem:
            ident.update(trustAnchorsPEM=existing.trust_anchors_pem, issuerCrtPEM=existing.issuer_crt_pem,
                         issuerKeyPEM=existing.issuer_key_pem)
        if not inj["crtPEM"] and existing.webhook_crt_pem:
            inj.update(crtPEM=existing.webhook_crt_pem, keyPEM=existing.webhook_key_pem,
                       caBundlePEM=existing.webhook_ca_pem)
    return values


def existing_from_objects(*, config_data: dict, issuer_secret: dict | None, webhook_secret: dict | None,
                          webhook_config: dict | None) -> Existing:
    """What `meshctl upgrade` reads back from an installed control plane."""

    def secret_field(secret, key):
        data = (secret or {}).get("data") or {}
        return base64.b64decode(data[key]).decode() if key in data else ""

    stored = None
    if config_data.get(INSTALL_VALUES_KEY):
        try:
            stored = json.loads(config_data[INSTALL_VALUES_KEY])
        except ValueError:
            raise InputError(f"configmap {CONFIG_MAP_NAME}: {INSTALL_VALUES_KEY} is not valid JSON") from None
    ca = ""
    for hook in (webhook_config or {}).get("webhooks") or []:
        ca = base64.b64decode(hook.get("clientConfig", {}).get("caBundle", "")).decode()
        break
    w_crt, w_key = secret_field(webhook_secret, "tls.crt"), secret_field(webhook_secret, "tls.key")
    if not (ca and webhook_pair_matches(w_crt, w_key, ca)):
        # A missing or mismatched webhook pair (the caBundle no longer signs the
        # serving certificate) is not worth keeping: the upgrade makes a new pair.
        w_crt = w_key = ca = ""
    return Existing(
        trust_anchors_pem=config_data.get("identityTrustAnchorsPEM", "") or secret_field(issuer_secret, "ca.crt"),
        issuer_crt_pem=secret_field(issuer_secret, "tls.crt"), issuer_key_pem=secret_field(issuer_secret, "tls.key"),
        webhook_crt_pem=w_crt, webhook_key_pem=w_key, webhook_ca_pem=ca, values=stored,
    )


# Kinds install creates, for uninstall to find by label (cluster-scoped last-created first).
INSTALLED_KINDS = (
    ("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("apps/v1", "deployments", "Deployment", True),
    ("v1", "services", "Service", True),
    ("v1", "secrets", "Secret", True),
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "serviceaccounts", "ServiceAccount", True),
)


def uninstall_objects(found: list[dict]) -> list[dict]:
    """Minimal objects (apiVersion, kind, name, namespace) for ``kubectl delete -f -``."""
    out = []
    for obj in found:
        meta = {"name": obj["metadata"]["name"]}
        if obj["metadata"].get("namespace"):
            meta["namespace"] = obj["metadata"]["namespace"]
        out.append({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta})
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[dict]) -> str:
    return "".join("---\n" + yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
                   for o in objs)


def to_json(objs: list[dict]) -> str:
    # One document: a List, which `kubectl apply -f -` takes as it takes a stream.
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2) + "\n"
