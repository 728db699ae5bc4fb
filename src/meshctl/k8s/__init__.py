"""The one module that imports the ``kubernetes`` client.

Everything else in meshctl asks this module for cluster data and receives
plain dicts, so cores stay pure and the client is only imported (slowly: about
0.3 s) by commands that really talk to a cluster.
"""

from __future__ import annotations

from typing import Any

from meshctl.errors import ClusterError


def _api_client(opts) -> Any:
    try:
        from kubernetes import client, config
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ClusterError(f"the kubernetes client is not installed: {exc}") from None
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=opts.kubeconfig, context=opts.context, client_configuration=cfg)
    except Exception as exc:  # kubernetes raises ConfigException, TypeError, OSError...
        try:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
        except Exception:
            raise ClusterError(f"cannot load kubeconfig: {exc}") from None
    cfg.retries = False
    return client.ApiClient(cfg)


def get_config_map(opts, namespace: str, name: str, *, timeout: float = 10.0) -> dict | None:
    """The ConfigMap's ``data``, or None when it does not exist."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CoreV1Api(_api_client(opts))
    try:
        cm = api.read_namespaced_config_map(name, namespace, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise ClusterError(f"reading configmap {namespace}/{name}: {exc.status} {exc.reason}") from None
    except Exception as exc:
        raise ClusterError(f"cannot reach the cluster: {exc}") from None
    return dict(cm.data or {})


def read_mesh_config(opts):
    """The installed mesh's configuration (``meshctl-config``), or a ClusterError saying why not."""
    from meshctl.meshconfig import CONFIG_MAP_NAME, MeshConfig

    data = get_config_map(opts, opts.mesh_namespace, CONFIG_MAP_NAME)
    if data is None:
        raise ClusterError(
            f"configmap {opts.mesh_namespace}/{CONFIG_MAP_NAME} not found: is meshctl installed? "
            "(use --ignore-cluster to work without a cluster)"
        )
    return MeshConfig.from_data(data, mesh_namespace=opts.mesh_namespace)


def control_plane_version(opts) -> str:
    return read_mesh_config(opts).proxy_version
