"""Live requests from proxies' tap (``meshctl viz tap|top|profile --tap``): the client side.

The proxy serves tap on its control listener (``meshctl_proxy.telemetry.tap``; the wire
protocol is in docs/proxy.md, "Tap"): one ``POST /tap`` with a JSON filter,
answered by a chunked stream of JSON lines.  This module holds

- :func:`parse_resource` and :class:`LocalResolver`: which proxies a resource
  (``deploy/x``, ``pod/x``, ``ns/x``) names, from the local mesh's state
  (``meshctl.demo.state``), tapped from here by :class:`LocalSource`; in a
  cluster :class:`ClusterSource` asks the API server, which relays to the tap
  server (:mod:`meshctl.viz.tapserver`, the tap APIService: docs/viz.md);
- :func:`subscribe`: one subscription, over mTLS with the tap credentials
  when the mesh has identity (the proxy admits only the tap identity), plain
  HTTP to a loopback proxy otherwise; :func:`tap_all` runs many and says
  when a stream ends or a proxy cannot be reached, reconnecting;
- pure renderers and aggregators: :func:`format_event` (linkerd's ``req``/
  ``rsp``/``end`` lines), :class:`TopTable` (``viz top``) and
  :func:`profile_from_requests` (``viz profile --tap``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl
from collections.abc import Callable, Iterable

from meshctl.errors import MeshctlError, UsageError
from meshctl.viz import resources
from meshctl.viz.resources import SHORT, Resource

DEFAULT_MAX_RPS = 100.0
CONNECT_TIMEOUT = 5.0
RECONNECT_DELAY = 1.0
MAX_LINE = 1 << 20  # one event line; the proxy's are a few hundred bytes

# What a tap can name: resources that are, or own, meshed pods (and their Services' names).
TAP_KINDS = ("deployment", "pod", "namespace", "statefulset", "daemonset", "service")


# The tap APIService (meshctl.viz.tapserver serves it; Linkerd's is tap.linkerd.io/v1alpha1).
API_GROUP = "tap.meshctl.io"
API_VERSION = "v1alpha1"
API_PREFIX = f"/apis/{API_GROUP}/{API_VERSION}"
PLURALS = {"deployments": "deployment", "pods": "pod", "statefulsets": "statefulset", "daemonsets": "daemonset",
           "services": "service"}
API_NOT_FOUND = "the server could not find the requested resource"  # the API server's 404 for an unserved path


class TapError(MeshctlError):
    """A proxy refused or broke a subscription; the message names the proxy."""


def parse_resource(text: str, *, flag: str = "RESOURCE") -> Resource:
    """``deploy/web``, ``po/web-0``, ``ns/shop``, ``svc/web-svc`` or a type (``deploy``): linkerd's names."""
    res = resources.parse_one(text, None, flag=flag)
    if res.kind not in TAP_KINDS:
        raise UsageError(f"{flag}: cannot tap {res.kind} {text!r} (tap takes deploy, pod, ns, sts, ds or svc)")
    if res.kind == "namespace" and not res.name:
        raise UsageError(f"{flag}: ns needs a name (ns/NAME)")
    return res


def split_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise MeshctlError(f"bad address {text!r} (expected HOST:PORT)")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class TapTarget:
    """One proxy to subscribe to."""

    namespace: str
    kind: str  # the owner kind ("deployment") or "pod"
    workload: str
    pod: str
    control: tuple[str, int]
    identity: str | None  # the proxy's own identity, checked when tapping over mTLS

    @property
    def name(self) -> str:
        return f"{SHORT.get(self.kind, self.kind)}/{self.workload}"


@dataclasses.dataclass(frozen=True, slots=True)
class TapCredentials:
    """The tap service's client certificate, which the proxies admit (mTLS)."""

    identity: str
    cert: str
    key: str
    trust_anchors: str

    def context(self) -> ssl.SSLContext:
        from meshctl_proxy.identity import tls_contexts as tls

        try:
            with open(self.trust_anchors) as f:
                anchors = f.read()
            return tls.client_context(trust_anchors_pem=anchors, cert_file=self.cert, key_file=self.key,
                                      alpn=("http/1.1",))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise MeshctlError(f"tap credentials ({self.cert}, {self.key}, {self.trust_anchors}): {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    """What an address is in the mesh, for ``-o wide`` and ``top``: a pod of a workload."""

    namespace: str
    kind: str
    workload: str
    pod: str


class LocalResolver:
    """Resources and addresses of the local mesh (``meshctl demo up``'s ``mesh.json``, contract B)."""

    def __init__(self, mesh) -> None:
        self.mesh = mesh
        self.by_host: dict[str, Peer] = {}
        self.by_addr: dict[str, Peer] = {}
        self.by_identity: dict[str, Peer] = {}
        for w in mesh.workloads:
            peer = Peer(w.namespace, w.kind, w.name, w.pod)
            self.by_identity.setdefault(w.identity, peer)
            for addr in (w.app, w.proxy.inbound, w.proxy.outbound, w.proxy.admin, w.proxy.control):
                if addr:
                    self.by_addr[addr] = peer
                    self.by_host.setdefault(split_addr(addr)[0], peer)

    @classmethod
    def load(cls, state_dir=None) -> "LocalResolver":
        from meshctl.demo import state

        return cls(state.load(state_dir))

    @property
    def namespace(self) -> str:
        return self.mesh.namespace

    def credentials(self) -> TapCredentials | None:
        tap = self.mesh.tap
        if tap is None:
            return None
        return TapCredentials(tap.identity, str(tap.cert), str(tap.key), str(tap.trust_anchors))

    def _matching(self, resource: Resource, namespace: str):
        for w in self.mesh.workloads:
            if resource.kind == "namespace":
                if w.namespace == resource.name:
                    yield w
                continue
            if w.namespace != namespace:
                continue
            if resource.kind == "pod" and resource.name in (None, w.pod):
                yield w
            elif resource.kind == "service" and resource.name in (None, w.service):
                yield w
            elif w.kind == resource.kind and resource.name in (None, w.name):
                yield w

    def targets(self, resource: Resource, namespace: str | None) -> list[TapTarget]:
        ns = namespace or self.namespace
        found = [TapTarget(w.namespace, w.kind, w.name, w.pod, split_addr(w.proxy.control),
                           w.identity if self.mesh.tap is not None else None)
                 for w in self._matching(resource, ns)]
        if not found:
            where = "" if resource.kind == "namespace" else f" in namespace {ns}"
            raise MeshctlError(f"no meshed {resource}{where} in the local mesh "
                               f"(known: {', '.join(sorted({'deploy/' + w.name for w in self.mesh.workloads}))})")
        return found

    def destination_addrs(self, resource: Resource, namespace: str | None) -> list[str]:
        """``--to``: the addresses requests to *resource* go to (its proxies' inbound and its app)."""
        ns = namespace or self.namespace
        addrs = []
        for w in self._matching(resource, ns):
            addrs += [a for a in (w.proxy.inbound, w.app) if a]
        if not addrs:
            raise MeshctlError(f"--to {resource}: nothing meshed by that name in namespace {ns}")
        return addrs

    def peer(self, addr: str | None) -> Peer | None:
        if not addr:
            return None
        return self.by_addr.get(addr) or self.by_host.get(split_addr(addr)[0])

    def ends(self, target: "TapTarget", req: dict) -> tuple[Peer | None, Peer | None]:
        """A request's source and destination: the tapped pod on its side; the other by the identity
        mTLS proved (a proxy's own connections leave from an address nobody listens on), else by address."""
        me = Peer(target.namespace, target.kind, target.workload, target.pod)
        if req.get("direction") == "inbound":
            return self.by_identity.get(req.get("client_id") or "") or self.peer(req.get("src")), me
        return me, self.by_identity.get(req.get("server_id") or "") or self.peer(req.get("dst"))


def api_path(resource: Resource, namespace: str) -> str:
    """The tap APIService path for *resource* (``deploy/web`` in *namespace*), as Linkerd's tap paths."""
    if resource.kind == "namespace":
        return f"{API_PREFIX}/watch/namespaces/{resource.name}/tap"
    plural = next(p for p, k in PLURALS.items() if k == resource.kind)
    if resource.name:
        return f"{API_PREFIX}/watch/namespaces/{namespace}/{plural}/{resource.name}/tap"
    return f"{API_PREFIX}/watch/namespaces/{namespace}/{plural}/tap"


class LocalSource:
    """Tap the local mesh: one subscription per proxy, from this process."""

    def __init__(self, resolver: LocalResolver, targets: list[TapTarget], dst: tuple[str, ...] = ()) -> None:
        self.resolver = resolver
        self.targets = targets
        self.dst = dst

    @property
    def namespace(self) -> str:
        return self.resolver.namespace

    async def run(self, query: "TapQuery", *, on_event: Callable[[TapTarget, dict], None],
                  notice: Callable[[str], None], stop: asyncio.Event) -> None:
        if self.dst:
            query = dataclasses.replace(query, dst=self.dst)
        await tap_all(self.targets, query, self.resolver.credentials(), on_event=on_event, notice=notice, stop=stop)


def _peer(doc: dict | None) -> Peer | None:
    """A resource as the tap server names it (``{"namespace", "pod", "deploy": NAME}``)."""
    if not isinstance(doc, dict):
        return None
    kind = next((k for k in doc if k not in ("namespace", "pod")), None)
    if kind is None:
        return None
    try:
        kind = resources.kind_of(kind)
    except UsageError:
        pass
    return Peer(doc.get("namespace", ""), kind, doc.get(SHORT.get(kind, kind)) or doc.get(kind, ""), doc.get("pod", ""))


class ClusterPeers:
    """The ends of a request as the tap server resolved them (its pods, by IP), for ``-o wide`` and ``top``."""

    def ends(self, target: TapTarget, req: dict) -> tuple[Peer | None, Peer | None]:
        return _peer(req.get("src_resource")), _peer(req.get("dst_resource"))


class ClusterSource:
    """Tap in a cluster: one request to the API server, relayed to the tap server (the tap APIService),
    which subscribes to the pods' proxies and streams their events back."""

    def __init__(self, cluster, resource: Resource, namespace: str, *, to: Resource | None = None,
                 to_namespace: str | None = None) -> None:
        self.cluster = cluster
        self.resource = resource
        self.namespace = namespace
        self.to = to
        self.to_namespace = to_namespace
        self.resolver = ClusterPeers()

    def body(self, query: "TapQuery") -> dict:
        doc = json.loads(query.to_json())
        if self.to is not None:
            doc["to"] = str(self.to)
            if self.to_namespace:
                doc["to_namespace"] = self.to_namespace
        return doc

    def _open(self, query: "TapQuery"):
        from meshctl import k8s

        try:
            return self.cluster.stream_lines("POST", api_path(self.resource, self.namespace), self.body(query))
        except k8s.ApiStatusError as exc:
            if exc.code == 404 and exc.status_message == API_NOT_FOUND:
                raise TapError("tap server not installed: run meshctl viz install | kubectl apply -f -") from None
            if exc.code == 503:
                raise TapError(f"tap server not available: {exc.status_message} (see meshctl viz check)") from None
            raise TapError(f"tap {self.resource} in namespace {self.namespace}: {exc}") from None

    async def run(self, query: "TapQuery", *, on_event: Callable[[TapTarget, dict], None],
                  notice: Callable[[str], None], stop: asyncio.Event) -> None:
        """Stream until *stop*; TapError when the tap server refuses, or its stream ends or breaks."""
        import threading

        loop = asyncio.get_running_loop()
        lines: asyncio.Queue = asyncio.Queue()
        stream = await asyncio.to_thread(self._open, query)

        def put(item) -> bool:
            try:
                loop.call_soon_threadsafe(lines.put_nowait, item)
                return True
            except RuntimeError:
                return False  # the loop is closed: the command is over

        def pump() -> None:
            try:
                for line in stream:
                    if not put(line):
                        return
                end = None
            except MeshctlError as exc:
                end = exc
            put(end)

        threading.Thread(target=pump, name="tap-stream", daemon=True).start()
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                getting = asyncio.create_task(lines.get())
                await asyncio.wait([getting, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    return
                item = getting.result()
                if item is None:
                    if stop.is_set():
                        return
                    raise TapError("the tap server ended the stream (restarted or shut down); run the command again")
                if isinstance(item, MeshctlError):
                    if stop.is_set():
                        return
                    detail = str(item).split(": ", 1)[-1]
                    raise TapError(f"the tap server went away mid-stream ({detail}); run the command again") from None
                self._deliver(item, on_event, notice)
        finally:
            stopped.cancel()
            stream.close()

    def _deliver(self, line: bytes, on_event, notice) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            raise TapError(f"the tap server sent a line that is not JSON: {line[:80]!r}") from None
        kind = doc.get("event")
        if kind == "notice":
            notice(str(doc.get("message")))
            return
        if kind == "error":
            raise TapError(str(doc.get("message")))
        proxy = doc.pop("proxy", None) or {}
        short, _, workload = str(proxy.get("workload", "")).partition("/")
        try:
            owner = resources.kind_of(short)
        except UsageError:
            owner = short
        target = TapTarget(proxy.get("namespace", ""), owner, workload, proxy.get("pod", ""), ("", 0), None)
        on_event(target, doc)


# --- the subscription ------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class TapQuery:
    """The filter sent to every proxy (``meshctl_proxy.telemetry.tap.TapFilter`` reads it)."""

    direction: str | None = None
    method: str | None = None
    authority: str | None = None
    path: str | None = None
    dst: tuple[str, ...] = ()
    max_rps: float = DEFAULT_MAX_RPS
    header_names: bool = False

    def to_json(self) -> bytes:
        doc = {"direction": self.direction, "method": self.method, "authority": self.authority, "path": self.path,
               "dst": list(self.dst), "max_rps": self.max_rps, "header_names": self.header_names}
        return json.dumps({k: v for k, v in doc.items() if v not in (None, [])}).encode()


class StreamEnded(Exception):
    """The proxy ended the stream (it is shutting down) or the connection broke."""


async def subscribe(target: TapTarget, query: TapQuery, creds: TapCredentials | None, *,
                    context: ssl.SSLContext | None = None, connect_timeout: float = CONNECT_TIMEOUT):
    """Yield the events (dicts) of one subscription; raises TapError (refused) or StreamEnded."""
    host, port = target.control
    ssl_ctx = context if context is not None else (creds.context() if creds is not None else None)
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_ctx, server_hostname=target.identity if ssl_ctx else None, limit=MAX_LINE)
    except TimeoutError:
        raise StreamEnded(f"connecting to {host}:{port} timed out") from None
    except ssl.SSLError as exc:
        raise TapError(f"{target.name} ({host}:{port}): TLS refused: {exc.reason or exc}") from None
    except OSError as exc:
        raise StreamEnded(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    try:
        if ssl_ctx is not None:
            from meshctl_proxy.identity import tls_contexts as tls

            try:
                tls.verify_peer_identity(writer.get_extra_info("ssl_object"), target.identity)
            except tls.IdentityMismatch as exc:
                raise TapError(f"{target.name} ({host}:{port}): {exc}") from None
        body = query.to_json()
        writer.write(b"POST /tap HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (host.encode(), port, len(body), body))
        status, headers = await _read_head(reader)
        if status != 200:
            detail = (await _read_body(reader, headers)).decode(errors="replace").strip()
            raise TapError(f"{target.name} ({host}:{port}) refused tap: {status} {detail}")
        async for line in _chunked_lines(reader):
            try:
                yield json.loads(line)
            except ValueError:
                raise StreamEnded(f"{host}:{port} sent a line that is not JSON: {line[:80]!r}") from None
        raise StreamEnded("the proxy ended the stream")
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        raise StreamEnded(f"connection to {host}:{port} lost ({type(exc).__name__})") from None
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise StreamEnded("the proxy closed the connection before answering")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise StreamEnded(f"not an HTTP response: {line[:80]!r}")
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    n = headers.get("content-length", "")
    if n.isdigit():
        return await reader.readexactly(min(int(n), 64 * 1024))
    return b""


async def _chunked_lines(reader: asyncio.StreamReader):
    """Lines of a chunked body (RFC 9112 section 7.1); a line may span chunks."""
    partial = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise asyncio.IncompleteReadError(b"", None)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        *lines, partial = (partial + data).split(b"\n")
        if len(partial) > MAX_LINE:
            raise StreamEnded("an event line longer than 1 MiB")
        for line in lines:
            if line:
                yield line


async def tap_all(targets: list[TapTarget], query: TapQuery, creds: TapCredentials | None, *,
                  on_event: Callable[[TapTarget, dict], None], notice: Callable[[str], None],
                  stop: asyncio.Event, reconnect: bool = True, context: ssl.SSLContext | None = None) -> None:
    """Subscribe to every target until *stop*; says (via *notice*) when a stream ends, and reconnects.

    Final, raised as TapError once every stream has stopped, because retrying
    cannot change them: every proxy refusing (403, 400, TLS), or none of them
    reachable at the first attempt (a wrong address, nothing running).
    """
    if context is None and creds is not None:
        context = creds.context()  # the tap server passes the context of its own, renewed, certificate
    refused: list[TapError] = []
    unreachable: list[str] = []
    connected: set[TapTarget] = set()

    async def one(target: TapTarget) -> None:
        attempts = 0
        while not stop.is_set():
            attempts += 1
            try:
                async for event in subscribe(target, query, creds, context=context):
                    if event.get("event") == "hello":
                        if target in connected:
                            notice(f"tap: {target.name} ({target.pod}): subscribed again")
                        connected.add(target)
                        continue
                    on_event(target, event)
            except TapError as exc:
                refused.append(exc)
                if len(refused) == len(targets):
                    stop.set()
                return
            except StreamEnded as exc:
                if attempts == 1 and target not in connected:
                    unreachable.append(f"{target.name} ({target.pod}): {exc}")
                    if len(unreachable) == len(targets):
                        stop.set()
                        return
                notice(f"tap: {target.name} ({target.pod}): {exc}" + ("; retrying" if reconnect else ""))
                if not reconnect:
                    return
            try:
                await asyncio.wait_for(stop.wait(), RECONNECT_DELAY)
            except TimeoutError:
                pass

    tasks = [asyncio.create_task(one(t)) for t in targets]
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            await asyncio.wait([stopper, asyncio.gather(*tasks)], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (*tasks, stopper):
            t.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
    if refused and len(refused) == len(targets):
        raise refused[0]
    if len(unreachable) == len(targets):
        raise TapError(f"cannot reach any proxy's control listener: {unreachable[0]}")
    for exc in refused:
        notice(f"tap: {exc}")


# --- rendering (pure) --------------------------------------------------------------

def _micros(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{round(ms * 1000)}µs"


GRPC_CODES = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
              "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
              "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")


@dataclasses.dataclass(slots=True)
class EventFormatter:
    """Linkerd's tap lines: ``req``/``rsp``/``end`` with the request's id, direction, peers and TLS.

    ``rsp`` and ``end`` repeat what ``req`` said about the request, so the
    formatter remembers each request until its ``end``.
    """

    resolver: LocalResolver | None = None
    wide: bool = False
    index: dict = dataclasses.field(default_factory=dict)  # target -> its number, the first part of an id
    open: dict = dataclasses.field(default_factory=dict)  # (target, id) -> req event

    def _prefix(self, target: TapTarget, req: dict | None, rid) -> str:
        n = self.index.setdefault(target, len(self.index))
        if req is None:
            return f"id={n}:{rid} proxy=?"
        proxy = "in" if req.get("direction") == "inbound" else "out"
        text = (f"id={n}:{rid} proxy={proxy} src={req.get('src')} dst={req.get('dst') or '-'} "
                f"tls={'true' if req.get('tls') else 'no_identity'}")
        return text

    def _resources(self, target: TapTarget, req: dict | None) -> str:
        if not self.wide or req is None:
            return ""
        out = []
        if self.resolver is not None:
            src, dst = self.resolver.ends(target, req)
        else:
            me = Peer(target.namespace, target.kind, target.workload, target.pod)
            src, dst = (None, me) if req.get("direction") == "inbound" else (me, None)
        for side, peer in (("src", src), ("dst", dst)):
            if peer is not None:
                out.append(f"{side}_{SHORT.get(peer.kind, peer.kind)}={peer.workload} {side}_pod={peer.pod} "
                           f"{side}_ns={peer.namespace}")
        if req.get("client_id"):
            out.append(f"client_id={req['client_id']}")
        if req.get("server_id"):
            out.append(f"server_id={req['server_id']}")
        return (" " + " ".join(out)) if out else ""

    def format(self, target: TapTarget, event: dict) -> str | None:
        kind, rid = event.get("event"), event.get("id")
        key = (target, rid)
        if kind == "req":
            self.open[key] = event
            route = f" :route={event['route']}" if self.wide and event.get("route") else ""
            return (f"req {self._prefix(target, event, rid)} :method={event.get('method')} "
                    f":authority={event.get('authority')} :path={event.get('path')}{route}"
                    f"{self._resources(target, event)}")
        req = self.open.get(key)
        if kind == "rsp":
            return (f"rsp {self._prefix(target, req, rid)} :status={event.get('status')} "
                    f"latency={_micros(event.get('latency_ms'))}{self._resources(target, req)}")
        if kind == "end":
            self.open.pop(key, None)
            if event.get("error"):
                what = f"error={event['error']}"
            elif event.get("grpc_status") is not None:
                code = event["grpc_status"]
                what = f"grpc-status={GRPC_CODES[code] if 0 <= code < len(GRPC_CODES) else code}"
            else:
                what = ""
            parts = [f"end {self._prefix(target, req, rid)}", what,
                     f"duration={_micros(event.get('duration_ms'))}",
                     f"response-length={event.get('response_bytes', 0)}B"]
            return " ".join(p for p in parts if p) + self._resources(target, req)
        return None

    def json_doc(self, target: TapTarget, event: dict) -> dict:
        """``-o json``: the proxy's event with the proxy that saw it and, where known, the peers' resources."""
        doc = {"proxy": {"namespace": target.namespace, "pod": target.pod, "workload": target.name}, **event}
        kind, rid = event.get("event"), event.get("id")
        req = event if kind == "req" else self.open.get((target, rid))
        if kind == "req":
            self.open[(target, rid)] = event
        elif kind == "end":
            self.open.pop((target, rid), None)
        if req is not None and self.resolver is not None:
            for side, peer in zip(("src", "dst"), self.resolver.ends(target, req)):
                if peer is not None:
                    doc[f"{side}_resource"] = {"namespace": peer.namespace, "pod": peer.pod,
                                               SHORT.get(peer.kind, peer.kind): peer.workload}
        return doc


# --- top (pure) ------------------------------------------------------------------------

@dataclasses.dataclass(slots=True)
class TopRow:
    source: str
    destination: str
    method: str
    path: str
    count: int = 0
    best_ms: float | None = None
    worst_ms: float | None = None
    last_ms: float | None = None
    successes: int = 0
    failures: int = 0

    @property
    def success_rate(self) -> float | None:
        done = self.successes + self.failures
        return self.successes / done if done else None


class TopTable:
    """``viz top``: requests aggregated by source, destination, method and path, most frequent first."""

    COLUMNS = ("Source", "Destination", "Method", "Path", "Count", "Best", "Worst", "Last", "Success Rate")

    def __init__(self, resolver: LocalResolver | None = None) -> None:
        self.resolver = resolver
        self.rows: dict[tuple[str, str, str, str], TopRow] = {}
        self.open: dict = {}  # (target, id) -> (row key, latency)

    def _names(self, target: TapTarget, req: dict) -> tuple[str, str]:
        """Pods where the mesh knows them, else the peer's IP, as linkerd viz top shows them."""
        inbound = req.get("direction") == "inbound"
        if self.resolver is not None:
            ends = self.resolver.ends(target, req)
        else:
            ends = (None, target) if inbound else (target, None)
        names = []
        for side, end in zip(("src", "dst"), ends):
            addr = req.get(side)
            names.append(end.pod if end is not None else (split_addr(addr)[0] if addr else "-"))
        return names[0], names[1]

    def add(self, target: TapTarget, event: dict) -> None:
        kind, key = event.get("event"), (target, event.get("id"))
        if kind == "req":
            path = (event.get("path") or "").split("?", 1)[0]
            row_key = (*self._names(target, event), event.get("method") or "", path)
            row = self.rows.get(row_key)
            if row is None:
                row = self.rows[row_key] = TopRow(*row_key)
            row.count += 1
            self.open[key] = [row, None, None]
        elif kind == "rsp" and key in self.open:
            self.open[key][1] = event.get("latency_ms")
            self.open[key][2] = event.get("status")
        elif kind == "end" and key in self.open:
            row, latency, status = self.open.pop(key)
            if latency is not None:
                row.last_ms = latency
                row.best_ms = latency if row.best_ms is None else min(row.best_ms, latency)
                row.worst_ms = latency if row.worst_ms is None else max(row.worst_ms, latency)
            grpc = event.get("grpc_status")
            ok = not event.get("error") and status is not None and status < 500 and grpc in (None, 0)
            if ok:
                row.successes += 1
            else:
                row.failures += 1

    def sorted_rows(self, limit: int | None = None) -> list[TopRow]:
        rows = sorted(self.rows.values(), key=lambda r: (-r.count, r.source, r.destination, r.method, r.path))
        return rows[:limit] if limit else rows

    @staticmethod
    def cells(row: TopRow) -> tuple[str, ...]:
        def ms(v):
            return "-" if v is None else (f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms")

        sr = row.success_rate
        return (row.source, row.destination, row.method, row.path, str(row.count), ms(row.best_ms),
                ms(row.worst_ms), ms(row.last_ms), "-" if sr is None else f"{sr * 100:.2f}%")


# --- profile --tap (pure) -------------------------------------------------------------------

_NUMERIC = re.compile(r"\d+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEXID = re.compile(r"[0-9a-fA-F]{16,}")


def route_template(path: str) -> str:
    """``/api/products/42?x=1`` -> ``/api/products/{id}``: numeric, UUID and long hex segments are parameters."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    segments = path.split("/")
    out = []
    for seg in segments:
        if seg and (_NUMERIC.fullmatch(seg) or _UUID.fullmatch(seg) or _HEXID.fullmatch(seg)):
            out.append("{id}")
        else:
            out.append(seg)
    return "/".join(out)


def profile_from_requests(requests: Iterable[tuple[str, str]], *, name: str, namespace: str, route_limit: int):
    """A ServiceProfile with a route per (method, path template) seen, the most requested first, at most *route_limit*.

    Routes are named like ``meshctl profile --open-api`` names them (``GET
    /api/products/{id}``, ``pathRegex`` with ``[^/]*`` per parameter), sorted
    by name for a stable output, and the result is checked by the same model
    ``meshctl profile --validate`` uses.
    """
    from collections import Counter

    from meshctl.profiles.openapi import path_regex
    from meshctl_proxy.policy.service_profile import RequestMatch, Route, ServiceProfile

    seen = Counter((method.upper(), route_template(path)) for method, path in requests)
    chosen = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:route_limit]
    routes = tuple(Route(name=f"{method} {template}", condition=RequestMatch(method=method,
                                                                             path_regex=path_regex(template)))
                   for (method, template), _ in sorted(chosen, key=lambda kv: (kv[0][1], kv[0][0])))
    profile = ServiceProfile(name=name, namespace=namespace, routes=routes)
    ServiceProfile.from_dict(profile.to_dict())  # raises ProfileError naming any problem
    return profile

