"""The checks of ``meshctl check``: categories, ids, descriptions, hints, verdicts.

Each verdict is a pure function of the facts it names (plain dicts from the
API server, PEM text, numbers) and raises :class:`Failed` with the reason.
Ids are stable (``category.check``): scripts and docs may rely on them.
Descriptions and categories follow ``linkerd check`` where Linkerd has the
same check, so its users recognise them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re

from meshctl.healthcheck import Category, Check, Failed

# Native sidecars (init containers with restartPolicy: Always), which inject
# uses, are on by default from Kubernetes 1.29 (KEP-753, beta).
MIN_KUBERNETES = (1, 29)
# Linkerd warns when a certificate expires within 60 days.
EXPIRY_WARNING = dt.timedelta(days=60)
# Linkerd's clock-skew tolerance: certificates are backdated less than this.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
PROXY_CONTAINER = "meshctl-proxy"
PROXY_VERSION_ANNOTATION = "meshctl.io/proxy-version"
TRUST_ROOT_ANNOTATION = "meshctl.io/trust-root-sha256"
TRUST_ANCHORS_ENV = "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS"


# --- helpers --------------------------------------------------------------------------------

def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


def _condition(obj: dict, type_: str) -> dict:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def _proxy_container(pod: dict) -> dict | None:
    spec = pod.get("spec") or {}
    for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if c.get("name") == PROXY_CONTAINER:
            return c
    return None


def _proxy_status(pod: dict) -> dict | None:
    status = pod.get("status") or {}
    for s in list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or []):
        if s.get("name") == PROXY_CONTAINER:
            return s
    return None


def _pod_ready(pod: dict) -> str:
    """'' when the pod is running and ready, else why not."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return f"pod/{_name(pod)} is {status.get('phase', 'Unknown')}, not Running"
    if _condition(pod, "Ready").get("status") != "True":
        waiting = [s["name"] for s in status.get("containerStatuses") or [] if not s.get("ready")]
        detail = f" (containers not ready: {', '.join(waiting)})" if waiting else ""
        return f"pod/{_name(pod)} is not ready{detail}"
    return ""


def _certs(pem: str, what: str):
    from meshctl.identity import certs

    if not pem:
        raise Failed(f"{what}: no certificate found")
    try:
        return certs.load_certificates(pem, source=what)
    except Exception as exc:
        raise Failed(str(exc)) from None


def _secret_text(secret: dict | None, key: str, what: str) -> str:
    if secret is None:
        raise Failed(f"{what} not found")
    data = secret.get("data") or {}
    if key not in data:
        raise Failed(f"{what} has no {key!r}")
    try:
        return base64.b64decode(data[key]).decode()
    except (ValueError, UnicodeDecodeError):
        raise Failed(f"{what}: {key!r} is not base64 PEM text") from None


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_algorithm(cert, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = cert.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise Failed(f"{what} uses {type(key).__name__.lstrip('_')}; must use ECDSA P-256 (as the proxies do)")
    if cert.signature_algorithm_oid.dotted_string != "1.2.840.10045.4.3.2":  # ecdsa-with-SHA256
        raise Failed(f"{what} is signed with {cert.signature_algorithm_oid._name}; must be ecdsa-with-SHA256")


def _check_valid(cert, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise Failed(f"{what} is not valid before {_fmt(cert.not_valid_before_utc)}")
    if now > cert.not_valid_after_utc:
        raise Failed(f"{what} expired at {_fmt(cert.not_valid_after_utc)}")


def _check_not_expiring(cert, what: str, now: dt.datetime) -> None:
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        raise Failed(f"{what} will expire on {_fmt(cert.not_valid_after_utc)}")


# --- kubernetes-api / kubernetes-version -----------------------------------------------------

def can_initialize_client(client) -> None:
    if client is None:
        raise Failed("no client")


def can_query_api(server_version: dict) -> None:
    if not server_version.get("gitVersion"):
        raise Failed("the API server did not report its version")


def minimum_kubernetes_version(server_version: dict) -> None:
    m = re.match(r"v?(\d+)\.(\d+)", server_version.get("gitVersion", ""))
    if not m:
        raise Failed(f"cannot parse the Kubernetes version {server_version.get('gitVersion')!r}")
    if (int(m.group(1)), int(m.group(2))) < MIN_KUBERNETES:
        raise Failed(f"Kubernetes is on version [{m.group(1)}.{m.group(2)}], but version "
                     f"[{MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}] or more recent is required")


# --- pre-kubernetes-setup ----------------------------------------------------------------------

def namespace_absent(namespace: dict | None, mesh_namespace: str) -> None:
    if namespace is not None:
        raise Failed(f'The "{mesh_namespace}" namespace already exists')


def _can(access: dict, keys) -> None:
    denied = [k for k in keys if not access.get(k)]
    if denied:
        raise Failed(f"missing permissions to create {', '.join(denied)}")


CLUSTER_RESOURCES = ("namespaces", "clusterroles", "clusterrolebindings", "customresourcedefinitions",
                     "mutatingwebhookconfigurations")
NAMESPACED_RESOURCES = ("serviceaccounts", "services", "deployments", "configmaps", "secrets")


def can_create_cluster_resources(access: dict) -> None:
    _can(access, CLUSTER_RESOURCES)


def can_create_namespaced_resources(access: dict) -> None:
    _can(access, NAMESPACED_RESOURCES)


def no_clock_skew(server_time: float, local_time: float) -> None:
    skew = abs(server_time - local_time)
    if skew > MAX_CLOCK_SKEW.total_seconds():
        raise Failed(f"clock skew of {int(skew)}s between this host and the API server "
                     f"(more than {int(MAX_CLOCK_SKEW.total_seconds())}s)")


# --- meshctl-crds / meshctl-config -----------------------------------------------------------

def crds_exist(crds: dict) -> None:
    missing = sorted(name for name, obj in crds.items() if obj is None)
    if missing:
        raise Failed(f"missing {', '.join(missing)}")
    for name, obj in sorted(crds.items()):
        if _condition(obj, "Established").get("status") != "True":
            raise Failed(f"{name} is not established")


def namespace_exists(namespace: dict | None, mesh_namespace: str) -> None:
    if namespace is None:
        raise Failed(f'The "{mesh_namespace}" namespace does not exist')


def _expect_names(found: list[dict], expected: list[str], kind: str) -> None:
    names = {_name(o) for o in found}
    missing = [n for n in expected if n not in names]
    if missing:
        raise Failed(f"missing {kind}: {', '.join(missing)}")


def cluster_roles_exist(cluster_roles: list, expected_names: dict) -> None:
    _expect_names(cluster_roles, expected_names["clusterroles"], "ClusterRoles")


def cluster_role_bindings_exist(cluster_role_bindings: list, expected_names: dict) -> None:
    _expect_names(cluster_role_bindings, expected_names["clusterrolebindings"], "ClusterRoleBindings")


def service_accounts_exist(service_accounts: list, expected_names: dict) -> None:
    _expect_names(service_accounts, expected_names["serviceaccounts"], "ServiceAccounts")


def webhook_config_exists(webhook_config: dict | None, expected_names: dict) -> None:
    if webhook_config is None:
        raise Failed(f"missing MutatingWebhookConfiguration: {expected_names['webhook']}")


# --- meshctl-existence ---------------------------------------------------------------------------

def config_map_exists(config_map: dict | None, mesh_namespace: str) -> None:
    if config_map is None:
        raise Failed(f"configmap {mesh_namespace}/meshctl-config not found")


def control_plane_pods_ready(pods: list, expected_names: dict) -> None:
    for deployment in expected_names["deployments"]:
        component = deployment.removeprefix("meshctl-")
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get("meshctl.io/control-plane-component")
                == component]
        if not mine:
            raise Failed(f'No running pods for "{deployment}"')
        for pod in mine:
            if problem := _pod_ready(pod):
                raise Failed(problem)


def no_unschedulable_pods(pods: list) -> None:
    for pod in pods:
        cond = _condition(pod, "PodScheduled")
        if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            raise Failed(f"pod/{_name(pod)}: {cond.get('message') or 'Unschedulable'}")


# --- meshctl-identity ------------------------------------------------------------------------------

def _anchors(config_map):
    return _certs(((config_map or {}).get("data") or {}).get("identityTrustAnchorsPEM", ""), "trust anchors")


def _issuer(issuer_secret):
    return _certs(_secret_text(issuer_secret, "tls.crt", "secret meshctl-identity-issuer"), "issuer certificate")[0]


def certificate_config_valid(config_map: dict | None, issuer_secret: dict | None) -> None:
    from meshctl.identity import certs

    _anchors(config_map)
    _issuer(issuer_secret)
    try:
        certs.load_private_key(_secret_text(issuer_secret, "tls.key", "secret meshctl-identity-issuer"),
                               source="issuer key")
    except Failed:
        raise
    except Exception as exc:
        raise Failed(str(exc)) from None


def anchors_algorithm(config_map: dict | None) -> None:
    for i, cert in enumerate(_anchors(config_map)):
        _check_algorithm(cert, f"trust anchor {i + 1}")


def anchors_valid(config_map: dict | None, now: dt.datetime) -> None:
    for i, cert in enumerate(_anchors(config_map)):
        _check_valid(cert, f"trust anchor {i + 1} ({cert.subject.rfc4514_string()})", now)


def anchors_not_expiring(config_map: dict | None, now: dt.datetime) -> None:
    for i, cert in enumerate(_anchors(config_map)):
        _check_not_expiring(cert, f"trust anchor {i + 1} ({cert.subject.rfc4514_string()})", now)


def issuer_algorithm(issuer_secret: dict | None) -> None:
    _check_algorithm(_issuer(issuer_secret), "issuer certificate")


def issuer_valid(issuer_secret: dict | None, now: dt.datetime) -> None:
    _check_valid(_issuer(issuer_secret), "issuer certificate", now)


def issuer_not_expiring(issuer_secret: dict | None, now: dt.datetime) -> None:
    _check_not_expiring(_issuer(issuer_secret), "issuer certificate", now)


def issuer_signed_by_anchor(config_map: dict | None, issuer_secret: dict | None) -> None:
    from cryptography.exceptions import InvalidSignature

    issuer = _issuer(issuer_secret)
    for anchor in _anchors(config_map):
        try:
            issuer.verify_directly_issued_by(anchor)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise Failed("issuer certificate is not signed by any of the trust anchors in meshctl-config")


# --- webhook certificates ------------------------------------------------------------------------

def _webhook_cert(webhook_secret):
    return _certs(_secret_text(webhook_secret, "tls.crt", "secret meshctl-proxy-injector-k8s-tls"),
                  "proxy-injector certificate")[0]


def webhook_cert_valid(webhook_secret: dict | None, mesh_namespace: str, now: dt.datetime) -> None:
    from cryptography import x509

    cert = _webhook_cert(webhook_secret)
    _check_valid(cert, "proxy-injector certificate", now)
    want = f"meshctl-proxy-injector.{mesh_namespace}.svc"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if want not in names:
        raise Failed(f"proxy-injector certificate is for {', '.join(names) or 'no DNS name'}, not {want}")


def webhook_cert_not_expiring(webhook_secret: dict | None, now: dt.datetime) -> None:
    _check_not_expiring(_webhook_cert(webhook_secret), "proxy-injector certificate", now)


def webhook_ca_bundle_matches(webhook_secret: dict | None, webhook_config: dict | None) -> None:
    from cryptography.exceptions import InvalidSignature

    cert = _webhook_cert(webhook_secret)
    if webhook_config is None:
        raise Failed("MutatingWebhookConfiguration not found")
    for hook in webhook_config.get("webhooks") or []:
        bundle = (hook.get("clientConfig") or {}).get("caBundle", "")
        try:
            cas = _certs(base64.b64decode(bundle).decode(), f"caBundle of webhook {hook.get('name')}")
        except (ValueError, UnicodeDecodeError):
            raise Failed(f"caBundle of webhook {hook.get('name')} is not base64 PEM") from None
        ok = False
        for ca in cas:
            try:
                ok = ca == cert or (cert.verify_directly_issued_by(ca) is None)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if ok:
                break
        if not ok:
            raise Failed(f"the caBundle of webhook {hook.get('name')} does not sign the proxy-injector's serving "
                         "certificate: the API server will refuse to call it")


# --- proxies ----------------------------------------------------------------------------------------

def _proxies_ready(pods: list, what: str) -> None:
    if not pods:
        raise Failed(f"no {what} pods found")
    for pod in pods:
        if _proxy_container(pod) is None:
            raise Failed(f"pod/{_name(pod)} has no {PROXY_CONTAINER} container: it is not meshed")
        status = _proxy_status(pod)
        if not status or not status.get("ready"):
            raise Failed(f"pod/{_name(pod)}: the {PROXY_CONTAINER} container is not ready")


def control_plane_proxies_healthy(pods: list) -> None:
    _proxies_ready(pods, "control plane")


def _versions(pods: list, want: str, against: str) -> None:
    for pod in pods:
        have = (pod["metadata"].get("annotations") or {}).get(PROXY_VERSION_ANNOTATION, "")
        if have != want:
            raise Failed(f"pod/{_name(pod)} runs proxy version {have or 'unknown'} but the {against} is {want}")


def control_plane_proxies_up_to_date(pods: list, config_map: dict | None) -> None:
    _versions(pods, ((config_map or {}).get("data") or {}).get("proxyVersion", ""), "control plane version")


def control_plane_proxies_match_cli(pods: list, cli_version: str) -> None:
    _versions(pods, cli_version, "CLI version")


def control_plane_matches_cli(config_map: dict | None, cli_version: str) -> None:
    version = ((config_map or {}).get("data") or {}).get("proxyVersion", "")
    if version != cli_version:
        raise Failed(f"control plane is running version {version or 'unknown'} but the CLI is {cli_version}")


def data_plane_namespace_exists(data_plane_namespace: str, data_plane_namespace_obj: dict | None) -> None:
    if data_plane_namespace and data_plane_namespace_obj is None:
        raise Failed(f'The "{data_plane_namespace}" namespace does not exist')


def data_plane_proxies_ready(data_plane_pods: list) -> None:
    _proxies_ready(data_plane_pods, "data plane")


def data_plane_trust_anchors(data_plane_pods: list, config_map: dict | None) -> None:
    current = ((config_map or {}).get("data") or {}).get("identityTrustAnchorsPEM", "")
    digest = hashlib.sha256(current.encode()).hexdigest()
    stale = []
    for pod in data_plane_pods:
        proxy = _proxy_container(pod) or {}
        env = {e.get("name"): e.get("value", "") for e in proxy.get("env") or []}
        if TRUST_ANCHORS_ENV in env:
            ok = env[TRUST_ANCHORS_ENV].strip() == current.strip()
        else:
            ok = (pod["metadata"].get("annotations") or {}).get(TRUST_ROOT_ANNOTATION) == digest
        if not ok:
            stale.append(f"pod/{_name(pod)}")
    if stale:
        raise Failed(f"proxies with certificates from another trust anchor (restart them): {', '.join(stale)}")


def data_plane_up_to_date(data_plane_pods: list, config_map: dict | None) -> None:
    _versions(data_plane_pods, ((config_map or {}).get("data") or {}).get("proxyVersion", ""),
              "control plane version")


def data_plane_matches_cli(data_plane_pods: list, cli_version: str) -> None:
    _versions(data_plane_pods, cli_version, "CLI version")


# --- the categories ----------------------------------------------------------------------------------

def _c(id_, description, hint, verdict, *facts, fatal=False, warning=False, retry=False) -> Check:
    return Check(id_, description, hint, verdict, tuple(facts), fatal=fatal, warning=warning, retry=retry)


KUBERNETES_API = Category("kubernetes-api", (
    _c("kubernetes-api.client", "can initialize the client",
       "check --kubeconfig and --context (or KUBECONFIG)", can_initialize_client, "client", fatal=True),
    _c("kubernetes-api.query", "can query the Kubernetes API",
       "is the API server reachable? try `kubectl version`", can_query_api, "server_version", fatal=True),
))

KUBERNETES_VERSION = Category("kubernetes-version", (
    _c("kubernetes-version.minimum", "is running the minimum Kubernetes API version",
       "upgrade the cluster: meshctl's native sidecars need Kubernetes 1.29 or later",
       minimum_kubernetes_version, "server_version", fatal=True),
))

PRE_KUBERNETES_SETUP = Category("pre-kubernetes-setup", (
    _c("pre-kubernetes-setup.namespace", "control plane namespace does not already exist",
       "uninstall the previous control plane (`meshctl uninstall | kubectl delete -f -`) or use `meshctl upgrade`",
       namespace_absent, "namespace", "mesh_namespace"),
    _c("pre-kubernetes-setup.cluster-permissions", "can create non-namespaced resources",
       "install as a cluster administrator", can_create_cluster_resources, "access"),
    _c("pre-kubernetes-setup.namespaced-permissions", "can create namespaced resources",
       "install as a cluster administrator", can_create_namespaced_resources, "access"),
    _c("pre-kubernetes-setup.clock-skew", "no clock skew detected",
       "synchronise this host's clock (and the nodes') with NTP: certificates are checked against it",
       no_clock_skew, "server_time", "local_time", warning=True),
))

MESHCTL_CRDS = Category("meshctl-crds", (
    _c("meshctl-crds.exist", "control plane CustomResourceDefinitions exist",
       "run `meshctl install --crds | kubectl apply -f -`", crds_exist, "crds", fatal=True),
))

MESHCTL_CONFIG = Category("meshctl-config", (
    _c("meshctl-config.namespace", "control plane Namespace exists",
       "run `meshctl install | kubectl apply -f -`", namespace_exists, "namespace", "mesh_namespace", fatal=True),
    _c("meshctl-config.cluster-roles", "control plane ClusterRoles exist",
       "re-apply the control plane: `meshctl upgrade | kubectl apply -f -`", cluster_roles_exist,
       "cluster_roles", "expected_names", fatal=True),
    _c("meshctl-config.cluster-role-bindings", "control plane ClusterRoleBindings exist",
       "re-apply the control plane: `meshctl upgrade | kubectl apply -f -`", cluster_role_bindings_exist,
       "cluster_role_bindings", "expected_names", fatal=True),
    _c("meshctl-config.service-accounts", "control plane ServiceAccounts exist",
       "re-apply the control plane: `meshctl upgrade | kubectl apply -f -`", service_accounts_exist,
       "service_accounts", "expected_names", fatal=True),
    _c("meshctl-config.webhooks", "control plane MutatingWebhookConfigurations exist",
       "re-apply the control plane: `meshctl upgrade | kubectl apply -f -`", webhook_config_exists,
       "webhook_config", "expected_names", fatal=True),
))

MESHCTL_EXISTENCE = Category("meshctl-existence", (
    _c("meshctl-existence.config-map", "'meshctl-config' config map exists",
       "re-apply the control plane: `meshctl upgrade | kubectl apply -f -`", config_map_exists,
       "config_map", "mesh_namespace", fatal=True),
    _c("meshctl-existence.pods-ready", "control plane pods are ready",
       "look at `kubectl -n <mesh namespace> get pods` and the pods' events", control_plane_pods_ready,
       "pods", "expected_names", fatal=True, retry=True),
    _c("meshctl-existence.schedulable", "no unschedulable pods",
       "add nodes or resources, or relax the pods' requests and anti-affinity", no_unschedulable_pods,
       "pods", fatal=True, retry=True),
))

MESHCTL_IDENTITY = Category("meshctl-identity", (
    _c("meshctl-identity.config", "certificate config is valid",
       "meshctl-config must hold identityTrustAnchorsPEM and meshctl-identity-issuer tls.crt/tls.key",
       certificate_config_valid, "config_map", "issuer_secret", fatal=True),
    _c("meshctl-identity.anchors-algorithm", "trust anchors are using supported crypto algorithm",
       "make the trust anchor with ECDSA P-256 (`meshctl identity create`)", anchors_algorithm, "config_map", fatal=True),
    _c("meshctl-identity.anchors-valid", "trust anchors are within their validity period",
       "rotate the trust anchor (see docs/identity.md)", anchors_valid, "config_map", "now", fatal=True),
    _c("meshctl-identity.anchors-expiry", "trust anchors are valid for at least 60 days",
       "plan a trust anchor rotation (see docs/identity.md)", anchors_not_expiring, "config_map", "now",
       warning=True),
    _c("meshctl-identity.issuer-algorithm", "issuer cert is using supported crypto algorithm",
       "make the issuer with ECDSA P-256 (`meshctl identity create`)", issuer_algorithm, "issuer_secret", fatal=True),
    _c("meshctl-identity.issuer-valid", "issuer cert is within its validity period",
       "rotate the issuer: give a new one with `meshctl upgrade -f` (identity.issuerCrtPEM/issuerKeyPEM)",
       issuer_valid, "issuer_secret", "now", fatal=True),
    _c("meshctl-identity.issuer-expiry", "issuer cert is valid for at least 60 days",
       "rotate the issuer soon: `meshctl upgrade -f` with identity.issuerCrtPEM/issuerKeyPEM",
       issuer_not_expiring, "issuer_secret", "now", warning=True),
    _c("meshctl-identity.issuer-chain", "issuer cert is issued by the trust anchor",
       "the issuer must be signed by a trust anchor in meshctl-config", issuer_signed_by_anchor,
       "config_map", "issuer_secret", fatal=True),
))

MESHCTL_WEBHOOKS = Category("meshctl-webhooks-and-apisvc-tls", (
    _c("meshctl-webhooks.injector-cert", "proxy-injector webhook has valid cert",
       "delete secret meshctl-proxy-injector-k8s-tls in the mesh namespace; `meshctl upgrade | kubectl apply -f -` "
       "then makes a new certificate",
       webhook_cert_valid, "webhook_secret", "mesh_namespace", "now", fatal=True),
    _c("meshctl-webhooks.injector-ca-bundle", "proxy-injector caBundle matches its cert",
       "the MutatingWebhookConfiguration's caBundle must sign secret meshctl-proxy-injector-k8s-tls: "
       "`meshctl upgrade | kubectl apply -f -` replaces a mismatched pair", webhook_ca_bundle_matches, "webhook_secret", "webhook_config",
       fatal=True),
    _c("meshctl-webhooks.injector-expiry", "proxy-injector cert is valid for at least 60 days",
       "renew the webhook certificate with `meshctl upgrade`", webhook_cert_not_expiring, "webhook_secret", "now",
       warning=True),
))

MESHCTL_CONTROL_PLANE_PROXY = Category("meshctl-control-plane-proxy", (
    _c("meshctl-control-plane-proxy.healthy", "control plane proxies are healthy",
       "look at the meshctl-proxy container's logs in the control plane pods", control_plane_proxies_healthy,
       "pods", retry=True),
    _c("meshctl-control-plane-proxy.up-to-date", "control plane proxies are up-to-date",
       "restart the control plane pods (`kubectl -n <mesh namespace> rollout restart deploy`)",
       control_plane_proxies_up_to_date, "pods", "config_map", warning=True),
    _c("meshctl-control-plane-proxy.cli-version", "control plane proxies and cli versions match",
       "use the meshctl CLI of the installed version, or upgrade the control plane", control_plane_proxies_match_cli,
       "pods", "cli_version", warning=True),
))

MESHCTL_VERSION = Category("meshctl-version", (
    _c("meshctl-version.control-plane", "control plane and cli versions match",
       "use the meshctl CLI of the installed version, or `meshctl upgrade`", control_plane_matches_cli,
       "config_map", "cli_version", warning=True),
))

MESHCTL_DATA_PLANE = Category("meshctl-data-plane", (
    _c("meshctl-data-plane.namespace", "data plane namespace exists",
       "check the namespace given with -n", data_plane_namespace_exists,
       "data_plane_namespace", "data_plane_namespace_obj", fatal=True),
    _c("meshctl-data-plane.ready", "data plane proxies are ready",
       "look at the meshctl-proxy container's logs in the listed pods", data_plane_proxies_ready,
       "data_plane_pods", retry=True),
    _c("meshctl-data-plane.trust-anchors", "data plane proxies certificate match CA",
       "restart the listed pods so they are injected with the current trust anchors",
       data_plane_trust_anchors, "data_plane_pods", "config_map"),
    _c("meshctl-data-plane.up-to-date", "data plane is up-to-date",
       "restart the listed pods to pick up the control plane's proxy version", data_plane_up_to_date,
       "data_plane_pods", "config_map", warning=True),
    _c("meshctl-data-plane.cli-version", "data plane and cli versions match",
       "use the meshctl CLI of the installed version", data_plane_matches_cli, "data_plane_pods", "cli_version",
       warning=True),
))


def categories(*, pre: bool = False, proxy: bool = False) -> list[Category]:
    """The categories ``meshctl check`` runs, in order (Linkerd's order)."""
    if pre:
        return [KUBERNETES_API, KUBERNETES_VERSION, PRE_KUBERNETES_SETUP]
    cats = [KUBERNETES_API, KUBERNETES_VERSION, MESHCTL_CRDS, MESHCTL_CONFIG, MESHCTL_EXISTENCE, MESHCTL_IDENTITY,
            MESHCTL_WEBHOOKS, MESHCTL_CONTROL_PLANE_PROXY, MESHCTL_VERSION]
    if proxy:
        cats.append(MESHCTL_DATA_PLANE)
    return cats


def all_checks() -> list[Check]:
    seen, out = set(), []
    for cat in categories() + [PRE_KUBERNETES_SETUP, MESHCTL_DATA_PLANE]:
        for check in cat.checks:
            if check.id not in seen:
                seen.add(check.id)
                out.append(check)
    return out
