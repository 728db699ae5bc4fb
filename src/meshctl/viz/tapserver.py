"""The tap server (``meshctl viz tap-server``): Linkerd's tap APIService, for a cluster.

``meshctl viz tap|top|profile --tap`` in a cluster send one request to the Kubernetes
API server, which relays it here because ``viz install`` registers an APIService
(``v1alpha1.tap.meshctl.io``, as Linkerd's ``v1alpha1.tap.linkerd.io``)::

    POST /apis/tap.meshctl.io/v1alpha1/watch/namespaces/NS/tap                  (a namespace)
    POST /apis/tap.meshctl.io/v1alpha1/watch/namespaces/NS/PLURAL/tap           (every deployment...)
    POST /apis/tap.meshctl.io/v1alpha1/watch/namespaces/NS/PLURAL/NAME/tap      (one)
    body: the proxies' tap filter (docs/proxy.md, "Tap"), plus "to"/"to_namespace"

The server

1. admits only the API server: the request-header protocol of aggregated APIs (the
   client certificate must chain to ``requestheader-client-ca-file`` of
   ``kube-system/extension-apiserver-authentication`` and carry an allowed name), which
   names the caller in ``X-Remote-User``/``X-Remote-Group``;
2. asks the API server whether that caller may ``watch`` RESOURCE/tap in group
   ``tap.meshctl.io`` (a SubjectAccessReview, as Linkerd's tap server does), so RBAC
   decides who taps what, per namespace and resource;
3. resolves the resource to its meshed, running pods (``meshctl.k8s``), and subscribes to
   each pod's proxy control port (4190) over mTLS as the tap identity,
   ``tap.<viz-ns>.serviceaccount.identity.<mesh-ns>.<trust-domain>``, the one identity the
   proxies admit; its certificate comes from the mesh's identity service exactly as a
   proxy's does (:class:`meshctl_proxy.identity.certificates.IdentityManager`, the
   ServiceAccount token projected for ``identity.meshctl.io``);
4. streams the merged events back as JSON lines, each with the proxy that saw it and, on
   ``req`` events, the resources at both ends (pods by IP), as ``viz tap -o json`` prints
   them; ``{"event": "notice"}`` lines say a proxy went away (it is subscribed to again),
   one ``{"event": "error"}`` line ends a stream no proxy would serve.

The pods are resolved once per request, as Linkerd's tap server does: a pod created
later is not tapped until the command is run again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Callable

from meshctl.errors import MeshctlError
from meshctl.viz import resources, tap
from meshctl.viz.resources import SHORT
from meshctl.viz.tap import API_GROUP, API_PREFIX, API_VERSION, PLURALS

log = logging.getLogger("meshctl.viz.tapserver")

PORT = 8089
AUTH_CONFIG_MAP = ("kube-system", "extension-apiserver-authentication")
MAX_REQUEST = 64 * 1024
MAX_BUFFERED = 1 << 20  # bytes queued to a slow caller before events are dropped (and counted)
PROXY_CONTAINER = "meshctl-proxy"
CONTROL_PLANE_LABEL = "meshctl.io/control-plane-ns"  # meshed pods carry it (the injector sets it)
DEFAULT_CONTROL_PORT = 4190

FILTER_FIELDS = ("direction", "method", "authority", "path", "dst", "max_rps", "header_names")


class HttpError(Exception):
    """An answer other than the stream: a Kubernetes Status with *code*, *reason* and *message*."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> bytes:
        return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": self.reason, "code": self.code}).encode()


# --- who is asking ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class RequestHeaderAuth:
    """The request-header settings of ``extension-apiserver-authentication`` (what the API server publishes)."""

    ca_pem: str
    allowed_names: tuple[str, ...]
    user_headers: tuple[str, ...]
    group_headers: tuple[str, ...]

    @classmethod
    def from_config_map(cls, data: dict) -> "RequestHeaderAuth":
        def names(key: str, default: list[str]) -> tuple[str, ...]:
            raw = data.get(key)
            try:
                value = json.loads(raw) if raw else default
            except ValueError:
                raise MeshctlError(f"{'/'.join(AUTH_CONFIG_MAP)}: {key} is not a JSON list") from None
            return tuple(str(v) for v in value)

        ca = data.get("requestheader-client-ca-file") or ""
        if "BEGIN CERTIFICATE" not in ca:
            raise MeshctlError(f"configmap {'/'.join(AUTH_CONFIG_MAP)} has no requestheader-client-ca-file: the API "
                               "server is not set up for aggregated APIs (--requestheader-client-ca-file)")
        return cls(ca, names("requestheader-allowed-names", []), names("requestheader-username-headers",
                                                                           ["X-Remote-User"]),
                   names("requestheader-group-headers", ["X-Remote-Group"]))

    def caller(self, peercert: dict | None, headers: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
        """(user, groups) named by the API server; HttpError 401 when the peer is not the API server."""
        if not peercert:
            raise HttpError(401, "Unauthorized", "the tap server answers the Kubernetes API server only "
                                                 "(no front-proxy client certificate): use meshctl viz tap")
        cn = next((v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        if self.allowed_names and cn not in self.allowed_names:
            raise HttpError(401, "Unauthorized", f"client certificate {cn!r} is not an allowed request-header "
                                                 "client")
        lowered = [(k.lower(), v) for k, v in headers]
        user = next((v for h in self.user_headers for k, v in lowered if k == h.lower()), "")
        if not user:
            raise HttpError(401, "Unauthorized", "no user named by the API server")
        groups = tuple(v for h in self.group_headers for k, v in lowered if k == h.lower())
        return user, groups


# --- what is asked ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class TapRequest:
    namespace: str
    kind: str  # "namespace", "deployment", ...
    name: str | None
    filter: dict  # what each proxy is sent
    to: resources.Resource | None = None
    to_namespace: str | None = None

    @property
    def resource(self) -> resources.Resource:
        return resources.Resource(self.kind, self.name, self.namespace)

    def review_attributes(self) -> dict:
        """What the SubjectAccessReview asks: watch RESOURCE/tap, as Linkerd's tap server asks for tap.linkerd.io."""
        plural = "namespaces" if self.kind == "namespace" else next(p for p, k in PLURALS.items() if k == self.kind)
        attrs = {"verb": "watch", "group": API_GROUP, "version": API_VERSION, "resource": plural,
                 "subresource": "tap", "namespace": self.namespace}
        if self.name:
            attrs["name"] = self.name
        return attrs


def parse_request(path: str, body: bytes) -> TapRequest:
    """The path and JSON body of a tap request; HttpError 404/400 naming what is wrong."""
    path = path.split("?", 1)[0]
    parts = path[len(API_PREFIX):].strip("/").split("/") if path.startswith(API_PREFIX + "/") else []
    if len(parts) < 4 or parts[:2] != ["watch", "namespaces"] or parts[-1] != "tap" or len(parts) > 6:
        raise HttpError(404, "NotFound", f"the server could not find the requested resource ({path})")
    ns, middle = parts[2], parts[3:-1]
    if not middle:
        kind, name = "namespace", ns
    elif middle[0] in PLURALS:
        kind, name = PLURALS[middle[0]], (middle[1] if len(middle) > 1 else None)
    else:
        raise HttpError(404, "NotFound", f"cannot tap {middle[0]} (tap takes deployments, pods, statefulsets, "
                                         "daemonsets, services and namespaces)")
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise HttpError(400, "BadRequest", "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise HttpError(400, "BadRequest", "the body must be a JSON object")
    unknown = sorted(set(doc) - set(FILTER_FIELDS) - {"to", "to_namespace"})
    if unknown:
        raise HttpError(400, "BadRequest", f"unknown field {unknown[0]!r} (known: "
                                           f"{', '.join(FILTER_FIELDS + ('to', 'to_namespace'))})")
    to = None
    if doc.get("to"):
        try:
            to = tap.parse_resource(str(doc["to"]), flag="to")
        except MeshctlError as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
    return TapRequest(ns, kind, name, {k: v for k, v in doc.items() if k in FILTER_FIELDS}, to,
                      doc.get("to_namespace") or None)


# --- pods (pure, over the API's JSON) ----------------------------------------------------

def owner_of(pod: dict) -> tuple[str, str]:
    """(kind, name) of the workload owning *pod*, as Prometheus' relabelling names it (a ReplicaSet
    ``web-5d4f8c`` whose pods carry ``pod-template-hash: 5d4f8c`` is deployment ``web``); else the pod."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller", True):
            continue
        kind, name = ref.get("kind", ""), ref.get("name", "")
        if kind == "ReplicaSet":
            h = (meta.get("labels") or {}).get("pod-template-hash")
            if h and name.endswith("-" + h):
                return "deployment", name[: -len(h) - 1]
            return "replicaset", name
        if kind in ("StatefulSet", "DaemonSet", "Job", "ReplicationController"):
            return kind.lower(), name
    return "pod", meta.get("name", "")


def is_tappable(pod: dict, mesh_namespace: str) -> bool:
    """Meshed by this mesh, running, with an address."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    st = pod.get("status") or {}
    return labels.get(CONTROL_PLANE_LABEL) == mesh_namespace and st.get("phase") == "Running" and bool(st.get("podIP"))


def control_port(pod: dict) -> int:
    """The proxy's control port: its MESHCTL_PROXY_CONTROL_LISTEN_ADDR (inject writes it), else 4190."""
    for c in (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get("initContainers", []):
        if c.get("name") != PROXY_CONTAINER:
            continue
        for env in c.get("env") or []:
            if env.get("name") == "MESHCTL_PROXY_CONTROL_LISTEN_ADDR" and str(env.get("value", "")).rpartition(":")[2].isdigit():
                return int(env["value"].rpartition(":")[2])
    return DEFAULT_CONTROL_PORT


def matches(pod: dict, kind: str, name: str | None, selector: dict | None = None) -> bool:
    """Is *pod* part of ``kind/name`` (name None: any of the kind)?  Services select by *selector*."""
    if kind == "namespace":
        return True
    if kind == "service":
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    if kind == "pod":
        return name is None or pod["metadata"]["name"] == name
    owner_kind, owner_name = owner_of(pod)
    return owner_kind == kind and name in (None, owner_name)


def container_addrs(pod: dict) -> list[str]:
    """``IP:PORT`` of every port the pod's containers declare (``--to``: where requests to it go)."""
    ip = (pod.get("status") or {}).get("podIP")
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == PROXY_CONTAINER:
            continue
        for p in c.get("ports") or []:
            if p.get("containerPort"):
                out.append(f"{ip}:{p['containerPort']}")
    return out


class PodIndex:
    """The cluster's pods for one request: what to tap, and who is at the other end of a request (by IP)."""

    def __init__(self, pods: list[dict], *, mesh_namespace: str, trust_domain: str) -> None:
        self.pods = pods
        self.mesh_namespace = mesh_namespace
        self.trust_domain = trust_domain
        self.by_ip: dict[str, tap.Peer] = {}
        self.by_identity: dict[str, list[tap.Peer]] = {}
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                self.by_ip[ip] = self.peer(pod)
                self.by_identity.setdefault(self.identity(pod), []).append(self.peer(pod))

    @staticmethod
    def peer(pod: dict) -> tap.Peer:
        kind, name = owner_of(pod)
        meta = pod["metadata"]
        return tap.Peer(meta.get("namespace", ""), kind, name, meta["name"])

    def identity(self, pod: dict) -> str:
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        return f"{sa}.{pod['metadata']['namespace']}.serviceaccount.identity.{self.mesh_namespace}.{self.trust_domain}"

    def select(self, namespace: str, kind: str, name: str | None, selector: dict | None = None) -> list[dict]:
        return [p for p in self.pods if p["metadata"].get("namespace") == namespace
                and is_tappable(p, self.mesh_namespace) and matches(p, kind, name, selector)]

    def targets(self, pods: list[dict]) -> list[tap.TapTarget]:
        out = []
        for pod in pods:
            peer = self.peer(pod)
            out.append(tap.TapTarget(peer.namespace, peer.kind, peer.workload, peer.pod,
                                     (pod["status"]["podIP"], control_port(pod)), self.identity(pod)))
        return out

    def resource_of(self, addr: str | None, identity: str | None = None) -> dict | None:
        """``{"namespace", "pod", KIND: NAME}`` of the pod at *addr*, as ``viz tap -o json`` prints resources;
        else of the one pod holding the *identity* mTLS proved (a peer whose address is not its pod's)."""
        peer = self.by_ip.get(tap.split_addr(addr)[0]) if addr else None
        if peer is None and identity and len(self.by_identity.get(identity, ())) == 1:
            peer = self.by_identity[identity][0]
        if peer is None:
            return None
        return {"namespace": peer.namespace, "pod": peer.pod, SHORT.get(peer.kind, peer.kind): peer.workload}


def annotate(target: tap.TapTarget, event: dict, index: PodIndex) -> dict:
    """The line sent to the caller: the proxy that saw *event* and, on ``req``, both ends' resources."""
    doc = {"proxy": {"namespace": target.namespace, "pod": target.pod, "workload": target.name}, **event}
    if event.get("event") == "req":
        me = {"namespace": target.namespace, "pod": target.pod, SHORT.get(target.kind, target.kind): target.workload}
        inbound = event.get("direction") == "inbound"
        other = (index.resource_of(event.get("src"), event.get("client_id")) if inbound else
                 index.resource_of(event.get("dst"), event.get("server_id")))
        src, dst = (other, me) if inbound else (me, other)
        if src is not None:
            doc["src_resource"] = src
        if dst is not None:
            doc["dst_resource"] = dst
    return doc


# --- the server ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class MeshNames:
    mesh_namespace: str
    trust_domain: str


class TapServer:
    """Serves tap requests relayed by the API server; one asyncio task per request."""

    def __init__(self, *, cluster, auth: RequestHeaderAuth, mesh: MeshNames,
                 client_context: Callable[[], ssl.SSLContext | None], ready: Callable[[], bool] = lambda: True) -> None:
        self.cluster = cluster
        self.auth = auth
        self.mesh = mesh
        self.client_context = client_context  # the tap identity's mTLS context, or None before it is issued
        self.ready = ready
        self.dropped = 0
        self.streams = 0

    # Blocking API calls run in threads: the kubernetes client is synchronous.
    def _review(self, user: str, groups: tuple[str, ...], attrs: dict) -> bool:
        return self.cluster.subject_access_review(user, groups, attrs)

    def _index(self) -> PodIndex:
        pods = self.cluster.list("v1", "pods")["items"]
        return PodIndex(pods, mesh_namespace=self.mesh.mesh_namespace, trust_domain=self.mesh.trust_domain)

    def _service_selector(self, namespace: str, name: str) -> dict:
        svc = self.cluster.get("v1", "services", name, namespace=namespace)
        if svc is None:
            raise HttpError(404, "NotFound", f'services "{name}" not found in namespace {namespace}')
        return (svc.get("spec") or {}).get("selector") or {}

    def _resolve(self, req: TapRequest) -> tuple[PodIndex, list[tap.TapTarget], list[str]]:
        index = self._index()
        selector = self._service_selector(req.namespace, req.name) if req.kind == "service" and req.name else None
        if req.kind == "service" and not req.name:
            raise HttpError(400, "BadRequest", "tap services by name (svc/NAME)")
        pods = index.select(req.namespace, req.kind, req.name, selector)
        if not pods:
            raise HttpError(404, "NotFound", f"no running meshed pods for {req.resource} in namespace {req.namespace}")
        dst: list[str] = []
        if req.to is not None:
            to_ns = req.to.name if req.to.kind == "namespace" else (req.to_namespace or req.namespace)
            to_selector = (self._service_selector(to_ns, req.to.name) if req.to.kind == "service" and req.to.name
                           else None)
            for pod in index.select(to_ns, req.to.kind, req.to.name, to_selector):
                dst += container_addrs(pod)
            if not dst:
                raise HttpError(404, "NotFound", f"--to {req.to}: no running meshed pods with ports in namespace "
                                                 f"{to_ns}")
        return index, index.targets(pods), dst

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.LimitOverrunError, ValueError,
                asyncio.CancelledError):
            pass  # a caller gone, a malformed request, or the server shutting down: nothing more to say
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_REQUEST:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = [(k.strip(), v.strip()) for k, sep, v in (ln.partition(":") for ln in lines[1:]) if sep]
        length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        if not length.isdigit() or int(length) > MAX_REQUEST:
            return await self._answer(writer, HttpError(413, "RequestEntityTooLarge", "request too large"))
        body = await reader.readexactly(int(length))
        if method == "GET" and path in ("/ready", "/live", "/healthz", "/readyz", "/livez"):
            ok = path in ("/live", "/livez") or self.ready()
            return await self._plain(writer, 200 if ok else 503, b"ok\n" if ok else b"no tap certificate yet\n")
        try:
            user, groups = self.auth.caller(writer.get_extra_info("peercert"), headers)
            if method == "GET" and path.split("?")[0].rstrip("/") == API_PREFIX:
                return await self._json(writer, 200, discovery())
            if method != "POST":
                raise HttpError(405, "MethodNotAllowed", "tap takes POST")
            req = parse_request(path, body)
            attrs = req.review_attributes()
            if not await asyncio.to_thread(self._review, user, groups, attrs):
                what = f'{attrs["resource"]}/tap' + (f' "{req.name}"' if req.name else "")
                raise HttpError(403, "Forbidden", f'User "{user}" cannot watch {what} in API group "{API_GROUP}" '
                                                  f'in the namespace "{req.namespace}"')
            context = self.client_context()
            if context is None:
                raise HttpError(503, "ServiceUnavailable", "the tap server has no mesh certificate (yet): it cannot "
                                                           "subscribe to the proxies")
            try:
                index, targets, dst = await asyncio.to_thread(self._resolve, req)
            except MeshctlError as exc:
                raise HttpError(503, "ServiceUnavailable", f"reading pods: {exc}") from None
        except HttpError as exc:
            return await self._answer(writer, exc)
        log.info("tap: %s (groups %s) taps %s in %s: %d proxies", user, ",".join(groups), req.resource,
                 req.namespace, len(targets))
        await self._stream(reader, writer, req, index, targets, dst, context)

    async def _stream(self, reader, writer, req: TapRequest, index: PodIndex, targets, dst, context) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n"
                     b"cache-control: no-store\r\nconnection: close\r\n\r\n")
        stop = asyncio.Event()
        self.streams += 1
        dropped = [0]

        def send(doc: dict) -> None:
            if writer.is_closing():
                stop.set()
                return
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                dropped[0] += 1  # the caller reads slower than events come: never hold up the proxies
                return
            data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        async def caller_gone() -> None:
            # The caller never sends more; EOF (or a reset) means it hung up: end the subscriptions.
            try:
                await reader.read()
            except (ConnectionError, ssl.SSLError):
                pass
            stop.set()

        watcher = asyncio.create_task(caller_gone())
        query = {**req.filter}
        if dst:
            query["dst"] = dst
        q = tap.TapQuery(direction=query.get("direction"), method=query.get("method"),
                         authority=query.get("authority"), path=query.get("path"), dst=tuple(query.get("dst") or ()),
                         max_rps=float(query.get("max_rps") or tap.DEFAULT_MAX_RPS),
                         header_names=bool(query.get("header_names")))
        try:
            await tap.tap_all(targets, q, None, context=context, stop=stop,
                              on_event=lambda target, event: send(annotate(target, event, index)),
                              notice=lambda message: send({"event": "notice", "message": message}))
        except tap.TapError as exc:
            send({"event": "error", "message": str(exc)})
        except asyncio.CancelledError:
            # Shutting down (SIGTERM: a rollout, a drained node): the caller is told why its stream ends.
            send({"event": "error", "message": "the tap server is shutting down; run the command again"})
        finally:
            watcher.cancel()
            self.streams -= 1
            self.dropped += dropped[0]
            log.info("tap: stream of %s in %s ended%s", req.resource, req.namespace,
                     f"; {dropped[0]} events dropped (the caller read too slowly)" if dropped[0] else "")
        if not writer.is_closing():
            writer.write(b"0\r\n\r\n")
            try:
                await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass

    async def _answer(self, writer, exc: HttpError) -> None:
        await self._send(writer, exc.code, "application/json", exc.body())

    async def _json(self, writer, code: int, doc: dict) -> None:
        await self._send(writer, code, "application/json", json.dumps(doc).encode())

    async def _plain(self, writer, code: int, data: bytes) -> None:
        await self._send(writer, code, "text/plain", data)

    @staticmethod
    async def _send(writer, code: int, ctype: str, data: bytes) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  405: "Method Not Allowed", 413: "Payload Too Large", 503: "Service Unavailable"}.get(code, "")
        writer.write(f"HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(data)}\r\n"
                     f"connection: close\r\n\r\n".encode() + data)
        await writer.drain()


def discovery() -> dict:
    """The APIResourceList the aggregator reads for ``/apis/tap.meshctl.io/v1alpha1``."""
    entries = [{"name": f"{plural}/tap", "singularName": "", "namespaced": True, "kind": "Tap", "verbs": ["watch"]}
               for plural in ("namespaces", *PLURALS)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{API_GROUP}/{API_VERSION}",
            "resources": entries}


def server_context(cert_file: str, key_file: str, auth: RequestHeaderAuth) -> ssl.SSLContext:
    """TLS for the API server's connections: our serving certificate (the APIService's caBundle vouches for
    it); a client certificate is asked for and, when sent, must chain to the request-header CA.  Optional
    at the handshake so that the kubelet's probes (no certificate) reach /ready; tap itself requires one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=auth.ca_pem)
    return ctx


# --- running it ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    listen: tuple[str, int]
    cert_file: str
    key_file: str
    namespace: str  # the viz namespace, where the tap ServiceAccount lives
    service_account: str
    identity_addr: tuple[str, int] | None  # None: the mesh's identity Service in the cluster
    identity_name: str | None
    token_file: str
    identity_dir: str
    cluster_domain: str


def load_settings(cluster, mesh_namespace: str, opts: ServeOptions):
    """What the tap server reads from the cluster at start: the mesh's configuration (trust anchors and
    trust domain, ``meshctl-config``) and the API server's request-header settings."""
    from meshctl.meshconfig import CONFIG_MAP_NAME, MeshConfig
    from meshctl_proxy.identity.certificates import IdentitySettings

    cm = cluster.get("v1", "configmaps", CONFIG_MAP_NAME, namespace=mesh_namespace)
    if cm is None:
        raise MeshctlError(f"configmap {mesh_namespace}/{CONFIG_MAP_NAME} not found: is meshctl installed?")
    mesh = MeshConfig.from_data(cm.get("data") or {}, mesh_namespace=mesh_namespace)
    if "BEGIN CERTIFICATE" not in mesh.trust_anchors_pem:
        raise MeshctlError(f"configmap {mesh_namespace}/{CONFIG_MAP_NAME} holds no trust anchors")
    auth_cm = cluster.get("v1", "configmaps", AUTH_CONFIG_MAP[1], namespace=AUTH_CONFIG_MAP[0])
    if auth_cm is None:
        raise MeshctlError(f"configmap {'/'.join(AUTH_CONFIG_MAP)} not found: the API server publishes it when "
                           "it serves aggregated APIs")
    auth = RequestHeaderAuth.from_config_map(auth_cm.get("data") or {})
    ns, trust = mesh_namespace, mesh.trust_domain
    host, port = opts.identity_addr or (f"meshctl-identity.{ns}.svc.{opts.cluster_domain}.", 8080)
    identity = IdentitySettings(
        local_name=mesh.identity_name(opts.service_account, opts.namespace), trust_anchors_pem=mesh.trust_anchors_pem,
        svc_host=host, svc_port=port,
        svc_name=opts.identity_name or f"meshctl-identity.{ns}.serviceaccount.identity.{ns}.{trust}",
        token_file=opts.token_file, directory=opts.identity_dir)
    return MeshNames(ns, trust), auth, identity


async def serve(cluster, mesh_namespace: str, opts: ServeOptions, *, announce: Callable[[str], None]) -> None:
    """Run until cancelled: the tap identity's certificate kept fresh, and the HTTPS listener."""
    from meshctl_proxy.identity.certificates import IdentityManager

    mesh, auth, settings = await asyncio.to_thread(load_settings, cluster, mesh_namespace, opts)
    identity = IdentityManager(settings)

    def client_context() -> ssl.SSLContext | None:
        creds = identity.current()
        return None if creds is None else creds.client_context(("http/1.1",))

    server = TapServer(cluster=cluster, auth=auth, mesh=mesh, client_context=client_context,
                       ready=identity.is_ready)
    renew = asyncio.create_task(identity.run())
    listener = await asyncio.start_server(server.handle, opts.listen[0], opts.listen[1],
                                          ssl=server_context(opts.cert_file, opts.key_file, auth),
                                          limit=MAX_REQUEST)
    addr = listener.sockets[0].getsockname()
    announce(f"tap server: listening on https://{addr[0]}:{addr[1]} as {settings.local_name} "
             f"(certificate from {settings.svc_host}:{settings.svc_port})")
    try:
        async with listener:
            await listener.serve_forever()
    finally:
        renew.cancel()
