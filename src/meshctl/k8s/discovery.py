"""The Kubernetes implementation of the destination's discovery interface.

Watches Services, EndpointSlices, Pods and ServiceProfiles through
:class:`meshctl.k8s.Cluster` and publishes a
:class:`~meshctl.destination.discovery.Snapshot`, so the destination server
serves proxies exactly as it does from the local registry: the resolution
rules live in the snapshot, once.

Each resource has one watcher thread doing what client-go's reflector does:
list (remember ``resourceVersion``), watch from there, follow bookmarks,
watch again when the server ends the stream, list again on 410 Gone, back
off and list again when the API server is unreachable (reconnect), and list
again every ``resync`` seconds whatever happens (heals anything missed).
Threads, because the client is synchronous; they publish on the event loop
with ``call_soon_threadsafe``, as :class:`SnapshotDiscovery` requires.

Endpoints: ready addresses of the EndpointSlices of a Service
(``kubernetes.io/service-name``), on the slice port named like the Service
port.  An address whose Pod carries ``meshctl.io/control-plane-ns`` is
meshed, with the TLS identity of the Pod's ServiceAccount (Linkerd's
``SA.NS.serviceaccount.identity.MESHNS.TRUSTDOMAIN``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from meshctl.destination.discovery import ServicePort, ServiceRecord, Snapshot, SnapshotDiscovery
from meshctl.errors import ClusterError
from meshctl.meshconfig import MeshConfig
from meshctl_proxy.discovery.resolution import WeightedAddr, sorted_endpoints

log = logging.getLogger("meshctl.destination.kubernetes")

CONTROL_PLANE_NS_LABEL = "meshctl.io/control-plane-ns"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# (key, apiVersion, plural)
WATCHED = (
    ("services", "v1", "services"),
    ("endpointslices", "discovery.k8s.io/v1", "endpointslices"),
    ("pods", "v1", "pods"),
    ("serviceprofiles", "meshctl.io/v1alpha2", "serviceprofiles"),
)


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def build_snapshot(state: dict[str, dict[tuple[str, str], dict]], *, mesh: MeshConfig) -> Snapshot:
    """The snapshot of the current objects (pure: what a test can call directly)."""
    pods_by_ip: dict[tuple[str, str], dict] = {}
    pods = state.get("pods", {})
    for pod in pods.values():
        ip = (pod.get("status") or {}).get("podIP")
        if ip:
            pods_by_ip[(pod["metadata"].get("namespace", ""), ip)] = pod
    slices_by_service: dict[tuple[str, str], list[dict]] = {}
    for sl in state.get("endpointslices", {}).values():
        svc = ((sl.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            slices_by_service.setdefault((sl["metadata"].get("namespace", ""), svc), []).append(sl)

    services = []
    for (ns, name), svc in sorted(state.get("services", {}).items()):
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        ips = [ip for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
               if ip and ip != "None"]
        ports = []
        for sp in spec.get("ports") or []:
            eps = []
            for sl in slices_by_service.get((ns, name), []):
                port = next((p.get("port") for p in sl.get("ports") or []
                             if (p.get("name") or "") == (sp.get("name") or "")), None)
                if port is None:
                    continue
                for ep in sl.get("endpoints") or []:
                    # Not-ready endpoints receive no traffic (EndpointSlice conditions, KEP-1672).
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    for addr in ep.get("addresses") or []:
                        eps.append(_endpoint(addr, port, ep, ns, pods_by_ip, pods, mesh))
            ports.append(ServicePort(int(sp["port"]), sorted_endpoints(eps)))
        services.append(ServiceRecord(name, ns, tuple(ports), tuple(ips)))

    profiles = {}
    for (ns, name), prof in sorted(state.get("serviceprofiles", {}).items()):
        if _profile_ok(prof):
            profiles[name.rstrip(".")] = prof
    return Snapshot(tuple(services), profiles, mesh.cluster_domain)


def _endpoint(addr: str, port: int, ep: dict, ns: str, pods_by_ip, pods, mesh: MeshConfig) -> WeightedAddr:
    ref = ep.get("targetRef") or {}
    pod = None
    if ref.get("kind") == "Pod":
        pod = pods.get((ref.get("namespace") or ns, ref.get("name", "")))
    pod = pod or pods_by_ip.get((ns, addr))
    labels = {"namespace": ns}
    if pod is None:
        return WeightedAddr.make(addr, port, labels=labels, meshed=False)
    labels["pod"] = pod["metadata"]["name"]
    pod_labels = pod["metadata"].get("labels") or {}
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    labels["serviceaccount"] = sa
    owner = pod_owner(pod)
    if owner is not None:
        labels[owner[0]] = owner[1]
    if pod_labels.get(CONTROL_PLANE_NS_LABEL) == mesh.mesh_namespace:
        return WeightedAddr.make(addr, port, labels=labels, meshed=True, identity=mesh.identity_name(sa, ns))
    return WeightedAddr.make(addr, port, labels=labels, meshed=False)


def pod_owner(pod: dict) -> tuple[str, str] | None:
    """The pod's workload as Linkerd's metrics name it: (``deployment``, name), (``statefulset``, name)...

    A ReplicaSet created by a Deployment is named ``<deployment>-<pod-template-hash>``:
    the Deployment is that name without the hash, as Linkerd's owner lookup concludes.
    """
    for ref in pod["metadata"].get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, name = ref.get("kind", ""), ref.get("name", "")
        if kind == "ReplicaSet":
            template_hash = (pod["metadata"].get("labels") or {}).get("pod-template-hash")
            if template_hash and name.endswith(f"-{template_hash}"):
                return "deployment", name[: -len(template_hash) - 1]
            return "replicaset", name
        if kind and name:
            return kind.lower(), name
    return None


def _profile_ok(doc: dict) -> bool:
    # A profile the proxy cannot use is left out (and logged), never served.
    from meshctl_proxy.policy.service_profile import ProfileError, ServiceProfile

    try:
        ServiceProfile.from_dict(doc)
    except ProfileError as exc:
        log.warning("serviceprofile %s/%s ignored: %s", *_key(doc), exc)
        return False
    return True


class KubernetesDiscovery(SnapshotDiscovery):
    def __init__(self, cluster_factory: Callable[[], Any], *, mesh: MeshConfig = MeshConfig(),
                 resync: float = 300.0, watch_timeout: int = 60, backoff: float = 1.0, max_backoff: float = 30.0):
        super().__init__(Snapshot(cluster_domain=mesh.cluster_domain))
        self._cluster_factory = cluster_factory
        self.mesh = mesh
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self._state: dict[str, dict[tuple[str, str], dict]] = {key: {} for key, _, _ in WATCHED}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced = {key: threading.Event() for key, _, _ in WATCHED}
        self.lists = 0  # full lists done (initial, resync, after 410 or a reconnect): for tests and logs
        self.watch_errors = 0

    @property
    def synced(self) -> bool:
        return all(e.is_set() for e in self._synced.values())

    async def wait_synced(self, *, poll: float = 0.02) -> None:
        """Until every resource was listed once and published: Linkerd's destination
        likewise waits for its informer caches before serving, so that no proxy
        is told "unknown" about a service that exists."""
        while not self.synced:
            await asyncio.sleep(poll)
        # The last publish was scheduled with call_soon_threadsafe: let it run.
        await asyncio.sleep(0)
        with self._lock:
            snapshot = build_snapshot(self._state, mesh=self.mesh)
        self.publish(snapshot)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        for key, api_version, plural in WATCHED:
            t = threading.Thread(target=self._reflect, args=(key, api_version, plural), daemon=True,
                                 name=f"watch-{key}")
            self._threads.append(t)
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            # Watch streams end within watch_timeout; don't block shutdown on them.
            for t in self._threads:
                t.join(0.05)
            self._threads = [t for t in self._threads if t.is_alive()]

    # --- one reflector per resource ----------------------------------------------------------------

    def _reflect(self, key: str, api_version: str, plural: str) -> None:
        cluster = None
        delay = self.backoff
        while not self._stop.is_set():
            try:
                if cluster is None:
                    cluster = self._cluster_factory()
                rv = self._list(cluster, key, api_version, plural)
                delay = self.backoff
                listed_at = time.monotonic()
                while not self._stop.is_set() and time.monotonic() - listed_at < self.resync:
                    timeout = max(1, min(self.watch_timeout, int(self.resync - (time.monotonic() - listed_at)) + 1))
                    rv = self._watch(cluster, key, api_version, plural, rv, timeout)
            except ClusterError as exc:
                # 410 Gone (WatchExpired), an unreachable server, a missing CRD: list again after a pause.
                self.watch_errors += 1
                from meshctl.k8s import WatchExpired

                if isinstance(exc, WatchExpired):
                    log.info("watch %s: %s; listing again", plural, exc)
                    continue
                log.warning("watch %s: %s; retrying in %.1fs", plural, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)

    def _list(self, cluster, key, api_version, plural) -> str:
        from meshctl.k8s import ApiStatusError

        try:
            listed = cluster.list(api_version, plural)
        except ApiStatusError as exc:
            if exc.code != 404:
                raise
            # The CRD is not installed (yet): serve without profiles, look again later.
            listed = {"items": [], "metadata": {"resourceVersion": ""}}
            self._replace(key, [])
            self._synced[key].set()
            raise ClusterError(f"{plural} not served by the API server (CRD missing?)") from None
        self.lists += 1
        self._replace(key, listed["items"])
        self._synced[key].set()
        return listed["metadata"].get("resourceVersion", "")

    def _watch(self, cluster, key, api_version, plural, rv, timeout) -> str:
        for type_, obj in cluster.watch(api_version, plural, resource_version=rv, timeout_seconds=timeout):
            if self._stop.is_set():
                break
            rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
            if type_ == "BOOKMARK":
                continue
            with self._lock:
                if type_ == "DELETED":
                    self._state[key].pop(_key(obj), None)
                else:
                    self._state[key][_key(obj)] = obj
            self._changed_state()
        return rv

    def _replace(self, key: str, items: list[dict]) -> None:
        with self._lock:
            self._state[key] = {_key(o): o for o in items}
        self._changed_state()

    def _changed_state(self) -> None:
        with self._lock:
            snapshot = build_snapshot(self._state, mesh=self.mesh)
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.publish, snapshot)
            except RuntimeError:  # the loop closed meanwhile
                pass


async def serve(discovery: KubernetesDiscovery, host: str, port: int, *, heartbeat: float) -> None:
    """Run *discovery*, and serve proxies once it has synced, until cancelled."""
    from meshctl.destination.server import DestinationServer

    async with asyncio.TaskGroup() as tg:
        tg.create_task(discovery.run())
        await discovery.wait_synced()
        server = DestinationServer(discovery, heartbeat=heartbeat)
        srv = await server.start(host, port)
        log.info("destination service (kubernetes) listening on %s:%s", *srv.sockets[0].getsockname()[:2])
        async with srv:
            await srv.serve_forever()
