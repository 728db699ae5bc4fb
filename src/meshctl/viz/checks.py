"""The viz extension's checks (``meshctl viz check``, and ``meshctl check`` when viz is installed),
as Linkerd's ``linkerd-viz`` category: the objects exist, the pods run, Prometheus answers and
scrapes the data plane.

Verdicts are pure functions over facts; :class:`VizFacts` adds the viz facts to the
control plane's (:class:`meshctl.healthcheck.facts.ClusterFacts`).
"""

from __future__ import annotations

from meshctl.healthcheck import Category, Check, Failed
from meshctl.healthcheck.facts import ClusterFacts
from meshctl.viz.install import COMPONENT_LABEL, COMPONENTS, EXTENSION, EXTENSION_LABEL, PROMETHEUS_PORT
from meshctl_proxy.config import VIZ_NAMESPACE

SELECTOR = f"{EXTENSION_LABEL}={EXTENSION}"


def namespace_exists(viz_namespace: dict | None) -> None:
    if viz_namespace is None:
        raise Failed(f"the {VIZ_NAMESPACE} namespace does not exist")


def cluster_roles_exist(viz_cluster_roles: list) -> None:
    _expect(viz_cluster_roles, "ClusterRoles")


def cluster_role_bindings_exist(viz_cluster_role_bindings: list) -> None:
    _expect(viz_cluster_role_bindings, "ClusterRoleBindings")


def _expect(found: list, kind: str) -> None:
    names = {o["metadata"]["name"] for o in found}
    missing = [f"meshctl-{VIZ_NAMESPACE}-{c}" for c in COMPONENTS if f"meshctl-{VIZ_NAMESPACE}-{c}" not in names]
    if missing:
        raise Failed(f"missing {kind}: {', '.join(missing)}")


def pods_running(viz_pods: list) -> None:
    running = {}
    for pod in viz_pods:
        component = (pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL)
        phase = (pod.get("status") or {}).get("phase")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])
        if phase == "Running" and ready:
            running[component] = pod["metadata"]["name"]
    missing = [c for c in COMPONENTS if c not in running]
    if missing:
        raise Failed(f"no running and ready pod for: {', '.join(missing)}")


def tap_api_answers(tap_api: object) -> None:
    """The API server relays to the tap server and it answers (Linkerd's "tap API service is running")."""
    if isinstance(tap_api, str):
        raise Failed(tap_api)


def prometheus_answers(prometheus_up: object) -> None:
    if isinstance(prometheus_up, str):
        raise Failed(prometheus_up)


def data_plane_scraped(prometheus_up: object) -> None:
    if isinstance(prometheus_up, str):
        raise Failed(prometheus_up)
    proxies = [s for s in prometheus_up if s.labels.get("job") == "linkerd-proxy"]
    if not proxies:
        raise Failed("Prometheus has no meshed pod to scrape (no linkerd-proxy targets)")
    down = sorted(f"{s.get('namespace')}/{s.get('pod')}" for s in proxies if s.value != 1)
    if down:
        raise Failed(f"proxies Prometheus cannot scrape: {', '.join(down[:5])}" + (" ..." if len(down) > 5 else ""))


def _c(id_, description, hint, verdict, *facts, fatal=False, warning=False, retry=False) -> Check:
    return Check(id_, description, hint, verdict, tuple(facts), fatal=fatal, warning=warning, retry=retry)


VIZ = Category("meshctl-viz", (
    _c("meshctl-viz.namespace", f"{VIZ_NAMESPACE} Namespace exists",
       "run `meshctl viz install | kubectl apply -f -`", namespace_exists, "viz_namespace", fatal=True),
    _c("meshctl-viz.cluster-roles", "viz extension ClusterRoles exist",
       "re-apply the extension: `meshctl viz install | kubectl apply -f -`", cluster_roles_exist,
       "viz_cluster_roles", fatal=True),
    _c("meshctl-viz.cluster-role-bindings", "viz extension ClusterRoleBindings exist",
       "re-apply the extension: `meshctl viz install | kubectl apply -f -`", cluster_role_bindings_exist,
       "viz_cluster_role_bindings", fatal=True),
    _c("meshctl-viz.pods-running", "viz extension pods are running",
       f"look at `kubectl -n {VIZ_NAMESPACE} get pods` and the pods' events", pods_running, "viz_pods",
       fatal=True, retry=True),
    _c("meshctl-viz.tap-api", "tap API service is running",
       f"look at the tap pod's logs: `kubectl -n {VIZ_NAMESPACE} logs deploy/tap`", tap_api_answers, "tap_api",
       retry=True),
    _c("meshctl-viz.prometheus", "prometheus is answering queries",
       f"look at the prometheus pod's logs in {VIZ_NAMESPACE}; the API server must reach it (services/proxy)",
       prometheus_answers, "prometheus_up", retry=True),
    _c("meshctl-viz.data-plane", "data plane proxies are scraped by prometheus",
       "mesh a workload (`meshctl inject`), or look at Prometheus' targets page", data_plane_scraped,
       "prometheus_up", warning=True, retry=True),
))


def categories() -> list[Category]:
    return [VIZ]


class VizFacts(ClusterFacts):
    """The control plane's facts plus the viz extension's."""

    def _fetch_viz_namespace(self) -> dict | None:
        return self.cluster.get("v1", "namespaces", VIZ_NAMESPACE)

    def _fetch_viz_cluster_roles(self) -> list:
        return self.cluster.list("rbac.authorization.k8s.io/v1", "clusterroles", label_selector=SELECTOR)["items"]

    def _fetch_viz_cluster_role_bindings(self) -> list:
        return self.cluster.list("rbac.authorization.k8s.io/v1", "clusterrolebindings",
                                 label_selector=SELECTOR)["items"]

    def _fetch_viz_pods(self) -> list:
        return self.cluster.list("v1", "pods", namespace=VIZ_NAMESPACE, label_selector=SELECTOR)["items"]

    def _fetch_tap_api(self) -> object:
        """The tap APIService's discovery document, through the API server (which relays it to the tap
        server over TLS with its front-proxy certificate), or why not (a string)."""
        import json

        from meshctl.errors import MeshctlError
        from meshctl.viz.tap import API_GROUP, API_PREFIX

        try:
            status, body, _ = self.cluster.raw_get(API_PREFIX)
        except MeshctlError as exc:
            return str(exc)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if status != 200:
            return f"{API_PREFIX}: HTTP {status}: {doc.get('message') or body[:200].decode(errors='replace')}"
        if doc.get("groupVersion") != f"{API_GROUP}/v1alpha1" or not doc.get("resources"):
            return f"{API_PREFIX}: not the tap server's answer"
        return doc

    def _fetch_prometheus_up(self) -> object:
        """``up`` from the viz Prometheus through the API server's service proxy, or why not (a string)."""
        from meshctl import k8s
        from meshctl.errors import MeshctlError
        from meshctl.viz.promclient import PrometheusClient

        transport, url = k8s.service_proxy(self.cluster, VIZ_NAMESPACE, "prometheus", PROMETHEUS_PORT)
        try:
            with PrometheusClient("http://prometheus.service-proxy", transport=transport, display_url=url,
                                  timeout=self.request_timeout) as client:
                return client.query("up")
        except MeshctlError as exc:
            return str(exc)

    def viz_installed(self) -> bool:
        """Is the extension there (its namespace exists)?  False also when the cluster cannot say."""
        from meshctl.errors import MeshctlError

        try:
            return self.get("viz_namespace") is not None
        except MeshctlError:
            return False
