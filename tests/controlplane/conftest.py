"""Fixtures for the Kubernetes-facing tests: a fake API server per test and a
kubeconfig pointing the real ``kubernetes`` client (and ``meshctl``) at it."""

from __future__ import annotations

import pytest

from fakekube import FakeKube
from fakekube.resources import BUILTIN_TYPES


@pytest.fixture
def kube():
    with FakeKube(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(kube, tmp_path):
    return str(kube.kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture
def cluster(kubeconfig):
    from meshctl.k8s import Cluster

    c = Cluster(kubeconfig=kubeconfig)
    yield c
    c.close()


def plural_of(kube: FakeKube, obj: dict) -> str:
    return kube.find_type(obj["apiVersion"], obj["kind"]).plural


def kubectl_apply(kube: FakeKube, cluster, objs) -> None:
    """What `kubectl apply -f -` does with a fresh stream: create each object through the API."""
    if isinstance(objs, dict) and objs.get("kind") == "List":
        objs = objs["items"]
    for obj in objs:
        ns = obj["metadata"].get("namespace", "")
        cluster.create(obj["apiVersion"], plural_of(kube, obj), obj, namespace=ns)


def kubectl_delete(kube: FakeKube, cluster, objs) -> list[str]:
    """What `kubectl delete -f -` does: delete each, reporting the not-found ones."""
    missing = []
    for obj in objs:
        ns = obj["metadata"].get("namespace", "")
        if not cluster.delete(obj["apiVersion"], plural_of(kube, obj), obj["metadata"]["name"], namespace=ns):
            missing.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return missing
