"""``meshctl viz install`` rendering: values in, Kubernetes objects out.  Pure.

The templates are ``manifests/viz/*.yaml`` (package data), filled structurally
as the control plane's are (:mod:`meshctl.install.template`).  What runs:

- Prometheus, discovering pods through the Kubernetes API and keeping each meshed
  pod's proxy admin port (container ``meshctl-proxy``, port ``meshctl-admin``),
  relabelled to Linkerd's labels: ``namespace``, ``pod``, the owner (``deployment``,
  ``statefulset``, ``daemonset``, ``k8s_job``...) and the pod's own labels, so the
  queries of :mod:`meshctl.viz.queries` and the Grafana dashboards apply;
- the tap server (``meshctl viz tap-server``, :mod:`meshctl.viz.tapserver`) behind the APIService
  ``v1alpha1.tap.meshctl.io``, running as the tap ServiceAccount, whose identity the proxies'
  control listeners admit, and the ``tap-admin`` ClusterRole saying who may tap;
- ``web``, the dashboard (``meshctl dashboard``) over that Prometheus, linking to an
  external Grafana when ``grafanaUrl`` is set;
- least-privilege RBAC for each.

Every object carries ``meshctl.io/extension: viz`` (Linkerd's ``linkerd.io/extension``),
which ``viz uninstall`` and ``meshctl check`` look for.
"""

from __future__ import annotations

import copy
from importlib import resources

import yaml

from meshctl import __version__
from meshctl.install import template
from meshctl.install.values import load_values_file, merge, parse_set

EXTENSION_LABEL = "meshctl.io/extension"
EXTENSION = "viz"
COMPONENT_LABEL = "meshctl.io/viz-component"
COMPONENTS = ("prometheus", "tap", "web")
WEB_PORT = 8084
PROMETHEUS_PORT = 9090
TAP_PORT = 8089
TAP_TLS_DIR = "/var/run/meshctl/tls"  # where the tap Deployment mounts its serving certificate (tap-k8s-tls)
PROXY_CONTAINER = "meshctl-proxy"  # meshctl.inject's names for the proxy container and its admin port
PROXY_ADMIN_PORT_NAME = "meshctl-admin"


def default_values() -> dict:
    return yaml.safe_load(resources.files("meshctl").joinpath("manifests/viz/values.yaml").read_text())


def build_values(*, files: list[str] = (), sets: list[str] = ()) -> dict:
    """Defaults, then values files, then ``--set`` (later wins); unknown keys are errors."""
    values = default_values()
    for path in files:
        values = merge(values, load_values_file(path), source=path)
    for assignment in sets:
        values = merge(values, parse_set(assignment), source=f"--set {assignment}")
    return values


def prometheus_config(values: dict, *, mesh_namespace: str) -> dict:
    """Prometheus' configuration: Linkerd viz's ``linkerd-proxy`` job with meshctl's names.

    Kept, as Linkerd keeps: the proxy container's admin port of pods whose
    ``meshctl.io/control-plane-ns`` label names this mesh.  The owner label comes
    from pod discovery's controller metadata (a ReplicaSet ``web-5d4f8c`` of a
    Deployment ``web`` whose pods carry ``pod-template-hash: 5d4f8c`` becomes
    ``deployment="web"``); the proxy exports the same labels itself, and
    ``honor_labels`` keeps its values, so the two never become ``exported_*`` pairs.
    """
    interval = values["prometheus"]["scrapeInterval"]
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_container_name", "__meta_kubernetes_pod_container_port_name",
                           "__meta_kubernetes_pod_label_meshctl_io_control_plane_ns"],
         "action": "keep", "regex": f"^{PROXY_CONTAINER};{PROXY_ADMIN_PORT_NAME};{mesh_namespace}$"},
        {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace", "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "action": "replace", "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_controller_kind", "__meta_kubernetes_pod_controller_name",
                           "__meta_kubernetes_pod_label_pod_template_hash"],
         "action": "replace", "regex": "ReplicaSet;(.+)-[a-z0-9]+;.+", "target_label": "deployment"},
    ]
    for kind, label in (("StatefulSet", "statefulset"), ("DaemonSet", "daemonset"), ("Job", "k8s_job"),
                        ("ReplicationController", "replicationcontroller")):
        relabel.append({"source_labels": ["__meta_kubernetes_pod_controller_kind",
                                          "__meta_kubernetes_pod_controller_name"],
                        "action": "replace", "regex": f"{kind};(.+)", "target_label": label})
    # The pods' own labels, as Linkerd copies them (`-l app=web` then selects series).
    relabel.append({"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"})
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}]},
            {"job_name": "linkerd-proxy", "honor_labels": True,
             "kubernetes_sd_configs": [{"role": "pod"}], "relabel_configs": relabel},
        ],
    }


def _labels(namespace: str, component: str | None) -> dict:
    labels = {EXTENSION_LABEL: EXTENSION, "app.kubernetes.io/part-of": "meshctl-viz",
              "app.kubernetes.io/version": __version__}
    if component:
        labels[COMPONENT_LABEL] = component
        labels["app.kubernetes.io/name"] = component
    return labels


def _context(values: dict, *, namespace: str, mesh_namespace: str) -> dict:
    version = values["image"]["version"] or __version__
    domain = values["clusterDomain"]
    prometheus_url = f"http://prometheus.{namespace}.svc.{domain}:{PROMETHEUS_PORT}"
    web = ["meshctl", f"--mesh-namespace={mesh_namespace}", "dashboard", "--address=0.0.0.0", f"--port={WEB_PORT}",
           "--show=url", f"--prometheus-url={prometheus_url}",
           # The Host header a browser sends through a port-forward or an ingress to the web Service.
           "--enforced-host=" + (values["dashboard"]["enforcedHost"] or
                                 rf"^(localhost|127\.0\.0\.1|web\.{namespace}\.svc(\.{domain})?)(:\d+)?$")]
    if values["grafanaUrl"]:
        web.append(f"--grafana-url={values['grafanaUrl']}")
    selectors = {c: {EXTENSION_LABEL: EXTENSION, COMPONENT_LABEL: c} for c in COMPONENTS}
    tap_ca, tap_crt, tap_key = tap_serving_certificate(namespace)
    tap = {
        "b64Ca": _b64(tap_ca), "b64Crt": _b64(tap_crt), "b64Key": _b64(tap_key),
        "command": ["meshctl", f"--mesh-namespace={mesh_namespace}", "viz", "tap-server",
                    f"--tls-cert-file={TAP_TLS_DIR}/tls.crt", f"--tls-key-file={TAP_TLS_DIR}/tls.key",
                    f"--namespace={namespace}", f"--cluster-domain={domain}"],
    }
    return {
        "namespace": namespace,
        "image": values["image"],
        "prometheus": values["prometheus"],
        "dashboard": values["dashboard"],
        "labels": {"namespace": _labels(namespace, None), **{c: _labels(namespace, c) for c in COMPONENTS},
                   # Kubernetes' `admin` role takes in the tap-admin rules (aggregation): namespace admins may tap.
                   "tapAdmin": {**_labels(namespace, "tap"), "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
        "tap": tap,
        "selectors": selectors,
        "podLabels": {c: {**_labels(namespace, c), **selectors[c]} for c in COMPONENTS},
        "prometheusConfig": yaml.safe_dump(prometheus_config(values, mesh_namespace=mesh_namespace), sort_keys=False),
        "webImage": f"{values['image']['name']}:{version}",
        "webCommand": web,
    }


def render(values: dict, *, namespace: str, mesh_namespace: str) -> list[dict]:
    """The viz extension's objects, in apply order."""
    ctx = _context(values, namespace=namespace, mesh_namespace=mesh_namespace)
    objs: list[dict] = []
    folder = resources.files("meshctl").joinpath("manifests/viz")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and entry.name != "values.yaml":
            objs.extend(template.render(entry.read_text(), ctx, source=f"manifests/viz/{entry.name}"))
    return copy.deepcopy(objs)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def tap_serving_certificate(namespace: str, *, lifetime_days: int = 365) -> tuple[str, str, str]:
    """(CA, certificate, key) PEM for the tap server's HTTPS: the API server checks the certificate
    against the APIService's ``caBundle`` for the name ``tap.NAMESPACE.svc``.  Made at each render, as
    Linkerd's chart makes its tap certificate (one year)."""
    import datetime as dt

    from meshctl.identity import certs

    name = f"tap.{namespace}.svc"
    ca = certs.generate_trust_anchor(common_name=f"{name} CA", lifetime=dt.timedelta(days=lifetime_days))
    key = certs.new_private_key()
    leaf = certs.issue_leaf(ca, public_key=key.public_key(), dns_name=name, lifetime=dt.timedelta(days=lifetime_days))
    return ca.cert_pem, certs.cert_to_pem(leaf), certs.key_to_pem(key)


# What `viz uninstall` looks for, by the extension label: cluster-scoped kinds (the APIService first:
# the API server stops relaying to a server about to go), the tap server's RoleBinding in kube-system,
# and the namespace (deleting the namespace deletes what is in it).
UNINSTALL_KINDS = (
    ("apiregistration.k8s.io/v1", "apiservices", "APIService"),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),  # the tap server's, in kube-system
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole"),
    ("v1", "namespaces", "Namespace"),
)
