"""The installed mesh's configuration: what ``meshctl install`` writes into the
``meshctl-config`` ConfigMap and what ``inject --manual``, ``profile`` and
``check`` read back.  Defined once here; pure data, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from meshctl import __version__

CONFIG_MAP_NAME = "meshctl-config"
DEFAULT_PROXY_IMAGE = "ghcr.io/meshctl/meshctl"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_CLUSTER_NETWORKS = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"


@dataclasses.dataclass(frozen=True, slots=True)
class MeshConfig:
    mesh_namespace: str = "meshctl"
    proxy_image: str = DEFAULT_PROXY_IMAGE
    proxy_version: str = __version__
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    trust_anchors_pem: str = ""
    cluster_networks: str = DEFAULT_CLUSTER_NETWORKS

    # ConfigMap data keys, camelCase as Kubernetes objects spell them.
    _KEYS = {
        "proxy_image": "proxyImage",
        "proxy_version": "proxyVersion",
        "cluster_domain": "clusterDomain",
        "trust_domain": "identityTrustDomain",
        "trust_anchors_pem": "identityTrustAnchorsPEM",
        "cluster_networks": "clusterNetworks",
    }

    def to_data(self) -> dict[str, str]:
        return {key: getattr(self, field) for field, key in self._KEYS.items()}

    @classmethod
    def from_data(cls, data: Mapping[str, str], *, mesh_namespace: str = "meshctl") -> "MeshConfig":
        values = {field: data[key] for field, key in cls._KEYS.items() if data.get(key)}
        return cls(mesh_namespace=mesh_namespace, **values)

    def identity_name(self, service_account: str, namespace: str) -> str:
        """A workload's mTLS identity, as Linkerd names them."""
        return f"{service_account}.{namespace}.serviceaccount.identity.{self.mesh_namespace}.{self.trust_domain}"
