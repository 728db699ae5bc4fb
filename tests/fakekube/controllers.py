"""What a cluster's controllers and kubelets would do, done at once.

The fake API server stores objects; nothing runs them.  Tests call
:func:`run_deployments` to have each Deployment's pods exist (as the
Deployment and ReplicaSet controllers and the scheduler would make them) and
report a status (as a kubelet would), then mutate that status to test
verdicts (not ready, unschedulable...).
"""

from __future__ import annotations

import copy
import hashlib

from fakekube.server import FakeKube, _now


def pod_status(pod: dict, *, ready: bool = True, ip: str = "127.0.0.1") -> dict:
    spec = pod["spec"]

    def cstatus(c):
        return {"name": c["name"], "ready": ready, "started": ready, "restartCount": 0, "image": c.get("image", ""),
                "imageID": "", "state": {"running": {"startedAt": _now()}} if ready else
                {"waiting": {"reason": "ContainerCreating"}}}

    init = [cstatus(c) if c.get("restartPolicy") == "Always" else
            {**cstatus(c), "ready": True, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            for c in spec.get("initContainers", [])]
    status = {
        "phase": "Running" if ready else "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": _now()},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": _now()},
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now()},
        ],
        "containerStatuses": [cstatus(c) for c in spec.get("containers", [])],
        "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": _now(), "qosClass": "BestEffort",
    }
    if init:
        status["initContainerStatuses"] = init
    return status


def run_deployments(kube: FakeKube, *, namespace: str | None = None, ready: bool = True) -> list[dict]:
    """Create the pods of every Deployment (in *namespace*) with a Running status; returns them."""
    pods = []
    n = 0
    for dep in kube.list("apps/v1", "Deployment", namespace):
        template = dep["spec"]["template"]
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        rs_hash = hashlib.sha256(repr(template).encode()).hexdigest()[:10]
        for i in range(dep["spec"].get("replicas", 1)):
            n += 1
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{name}-{rs_hash}-{i:05d}"[:63], "namespace": ns,
                                "labels": {**template["metadata"].get("labels", {}), "pod-template-hash": rs_hash},
                                "annotations": dict(template["metadata"].get("annotations", {})),
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                     "name": f"{name}-{rs_hash}", "uid": "0", "controller": True}]},
                   "spec": copy.deepcopy(template["spec"])}
            pod["spec"]["nodeName"] = "fake-node"
            pod["status"] = pod_status(pod, ready=ready, ip=f"127.0.{n // 250}.{n % 250 + 1}")
            pods.append(kube.put(pod))
        replicas = dep["spec"].get("replicas", 1)
        dep["status"] = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": replicas,
                         "updatedReplicas": replicas, "readyReplicas": replicas if ready else 0,
                         "availableReplicas": replicas if ready else 0}
        kube.put(dep)
    return pods
