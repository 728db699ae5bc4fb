"""The facts checks need, fetched from the cluster through :mod:`meshctl.k8s`.

Each fact is fetched once per run (a check that is retried forgets its
facts first, so it sees the cluster change).  A fact that cannot be fetched
raises; the checks depending on it fail with that reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from meshctl import __version__
from meshctl.install import COMPONENTS, CONTROL_PLANE_NS_LABEL, WEBHOOK_CONFIG, WEBHOOK_SECRET, ISSUER_SECRET
from meshctl.meshconfig import CONFIG_MAP_NAME


class ClusterFacts:
    def __init__(self, *, kubeconfig: str | None, context: str | None, mesh_namespace: str,
                 data_plane_namespace: str = "", request_timeout: float = 10.0):
        self.kubeconfig, self.context = kubeconfig, context
        self.ns = mesh_namespace
        self.data_plane_namespace = data_plane_namespace
        self.request_timeout = request_timeout
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cluster = None

    def get(self, name: str) -> Any:
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        value = getattr(self, f"_fetch_{name}")()
        with self._lock:
            self._cache[name] = value
        return value

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                if name not in ("client",):
                    self._cache.pop(name, None)

    # --- the facts ---------------------------------------------------------------------------

    @property
    def cluster(self):
        return self.get("client")

    def _fetch_client(self):
        from meshctl.k8s import Cluster

        self._cluster = Cluster(kubeconfig=self.kubeconfig, context=self.context, timeout=self.request_timeout)
        return self._cluster

    def _fetch_server_version(self) -> dict:
        return self.cluster.version()

    def _fetch_server_time(self) -> float:
        return self.cluster.server_time()

    def _fetch_local_time(self) -> float:
        return time.time()

    def _fetch_now(self):
        from meshctl.identity.certs import utcnow

        return utcnow()

    def _fetch_mesh_namespace(self) -> str:
        return self.ns

    def _fetch_cli_version(self) -> str:
        return __version__

    def _fetch_namespace(self) -> dict | None:
        return self.cluster.get("v1", "namespaces", self.ns)

    def _fetch_access(self) -> dict:
        from meshctl.healthcheck.checks import CLUSTER_RESOURCES, NAMESPACED_RESOURCES

        groups = {"clusterroles": "rbac.authorization.k8s.io", "clusterrolebindings": "rbac.authorization.k8s.io",
                  "customresourcedefinitions": "apiextensions.k8s.io",
                  "mutatingwebhookconfigurations": "admissionregistration.k8s.io", "deployments": "apps"}
        out = {}
        for res in CLUSTER_RESOURCES:
            out[res] = self.cluster.can_i("create", res, group=groups.get(res, ""))
        for res in NAMESPACED_RESOURCES:
            out[res] = self.cluster.can_i("create", res, group=groups.get(res, ""), namespace=self.ns)
        return out

    def _fetch_crds(self) -> dict:
        from meshctl.install import render_crds

        return {crd["metadata"]["name"]: self.cluster.get("apiextensions.k8s.io/v1", "customresourcedefinitions",
                                                          crd["metadata"]["name"])
                for crd in render_crds()}

    def _fetch_expected_names(self) -> dict:
        return {
            "clusterroles": [f"meshctl-{self.ns}-{c}" for c in COMPONENTS],
            "clusterrolebindings": [f"meshctl-{self.ns}-{c}" for c in COMPONENTS],
            "serviceaccounts": [f"meshctl-{c}" for c in COMPONENTS],
            "deployments": [f"meshctl-{c}" for c in COMPONENTS],
            "webhook": WEBHOOK_CONFIG,
        }

    def _selector(self) -> str:
        return f"{CONTROL_PLANE_NS_LABEL}={self.ns}"

    def _fetch_cluster_roles(self) -> list:
        return self.cluster.list("rbac.authorization.k8s.io/v1", "clusterroles", label_selector=self._selector())["items"]

    def _fetch_cluster_role_bindings(self) -> list:
        return self.cluster.list("rbac.authorization.k8s.io/v1", "clusterrolebindings",
                                 label_selector=self._selector())["items"]

    def _fetch_service_accounts(self) -> list:
        return self.cluster.list("v1", "serviceaccounts", namespace=self.ns)["items"]

    def _fetch_webhook_config(self) -> dict | None:
        return self.cluster.get("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", WEBHOOK_CONFIG)

    def _fetch_config_map(self) -> dict | None:
        return self.cluster.get("v1", "configmaps", CONFIG_MAP_NAME, namespace=self.ns)

    def _fetch_pods(self) -> list:
        return self.cluster.list("v1", "pods", namespace=self.ns,
                                 label_selector="meshctl.io/control-plane-component")["items"]

    def _fetch_issuer_secret(self) -> dict | None:
        return self.cluster.get("v1", "secrets", ISSUER_SECRET, namespace=self.ns)

    def _fetch_webhook_secret(self) -> dict | None:
        return self.cluster.get("v1", "secrets", WEBHOOK_SECRET, namespace=self.ns)

    def _fetch_data_plane_namespace(self) -> str:
        return self.data_plane_namespace

    def _fetch_data_plane_namespace_obj(self) -> dict | None:
        if not self.data_plane_namespace:
            return None
        return self.cluster.get("v1", "namespaces", self.data_plane_namespace)

    def _fetch_data_plane_pods(self) -> list:
        pods = self.cluster.list("v1", "pods", namespace=self.data_plane_namespace,
                                 label_selector=self._selector())["items"]
        # The control plane's own pods are checked by their own category.
        return [p for p in pods if p["metadata"].get("namespace") != self.ns]
