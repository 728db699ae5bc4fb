"""A fake Kubernetes API server: real HTTPS on loopback, the real REST API.

What it does as kube-apiserver does (status codes and response shapes copied
from the real server, Kubernetes 1.31):

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/G``, ``/apis/G/V``;
  CustomResourceDefinitions add their group/versions when created and remove
  them (and every instance) when deleted, so a missing CRD is a 404 as in a cluster;
- ``get``, ``list`` (label and field selectors, ``limit``/``continue``),
  ``create`` (201; uid, creationTimestamp, resourceVersion, generation,
  generateName; 409 AlreadyExists; 404 when the namespace is missing; 422 on a
  missing or invalid name), ``update`` (optimistic concurrency: 409 Conflict on
  a stale resourceVersion), ``patch`` (merge, JSON and strategic merge),
  ``delete`` (Status, or the object for pods and namespaces; deleting a
  namespace deletes its contents);
- the ``status`` subresource: the main endpoint ignores status changes and
  ``/status`` changes only status, for the types that have one;
- ``watch`` with ``resourceVersion`` semantics (unset or "0": synthetic ADDED
  for the current state; N: events after N; older than the retained history:
  an ERROR event carrying Status 410 Expired), ``allowWatchBookmarks``
  (BOOKMARK events), ``timeoutSeconds``, selectors (objects leaving a
  selector arrive as DELETED);
- authentication by bearer token (401), authorization per user (403 with the
  real message), ``TokenReview`` and ``SelfSubjectAccessReview`` answered from
  the same tables.

Tests drive the world around it with :class:`FakeKube` methods: ``put`` and
``remove`` (what controllers and kubelets would do), ``issue_token``, ``deny``,
``compact`` (forget history, forcing 410 on old watches) and
``close_watches`` (an apiserver restart from the client's point of view).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import http.server
import ipaddress
import json
import re
import secrets
import socketserver
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from fakekube import admission, aggregation, patches, selectors
from fakekube.resources import BUILTIN_TYPES, ResourceType, crd_types

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SYSTEM_NAME = re.compile(r"^[a-z0-9:.-]+$")  # RBAC objects may be named system:...


_SERVICE_PROXY = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<ref>[^/]+)/proxy(?P<rest>/.*)?$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, *, details: dict | None = None) -> dict:
    """A metav1.Status, as every error body of the API server is."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.body = status(code, reason, message, details=details)
        self.code = code


def not_found(rt: ResourceType, name: str) -> ApiError:
    res = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(404, "NotFound", f'{res} "{name}" not found',
                    {"name": name, "group": rt.group, "kind": rt.plural} if rt.group else
                    {"name": name, "kind": rt.plural})


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    rv: int
    key: tuple[str, str]  # (group, plural)
    type: str
    obj: dict
    old: dict | None


class FakeKube:
    """The fake API server.  ``with FakeKube() as kube: kube.kubeconfig(path)``."""

    def __init__(self, *, git_version: str = "v1.31.0", bookmark_interval: float = 1.0, history: int = 10_000,
                 tls: bool = True):
        self.git_version = git_version
        self.bookmark_interval = bookmark_interval
        self.history = history
        self.tls = tls
        self._lock = threading.Condition(threading.RLock())
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in BUILTIN_TYPES:
            self._types[(rt.group, rt.version, rt.plural)] = rt
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        self._events: list[Event] = []
        self._rv = 1000
        self._compacted_rv = 0
        self._watch_generation = 0
        self._tokens: dict[str, User] = {}
        self._denied: set[tuple[str, str, str, str, str]] = set()  # (user, verb, group, resource, namespace|*)
        self._admin = User("kubernetes-admin", uid="admin", groups=("system:masters", "system:authenticated"))
        self.admin_token = self.issue_user_token(self._admin)
        self.requests: list[tuple[str, str]] = []  # (method, path?query) for assertions
        self.clock_offset = 0.0  # seconds added to the Date header (clock-skew tests)
        # Where a Service's port is really served, for calling admission webhooks:
        # (namespace, service, port) -> (host, port).  A cluster's network does this.
        self.service_endpoints: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="fakekube-")
        self.ca_pem = b""
        self.front_proxy: aggregation.FrontProxy | None = None  # what the aggregator presents to APIServices
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> "FakeKube":
        handler = type("Handler", (_Handler,), {"kube": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        if self.tls:
            ctx = self._tls_context()
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.front_proxy = aggregation.make_front_proxy(self._tmp.name)
            self.put(aggregation.authentication_config_map(self.front_proxy, self.ca_pem.decode()))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.close_watches()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
        self._tmp.cleanup()

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def _tls_context(self) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakekube-apiserver")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            x509.DNSName("localhost")]), critical=False)
                .sign(key, hashes.SHA256()))
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_file = Path(self._tmp.name) / "apiserver.crt"
        key_file = Path(self._tmp.name) / "apiserver.key"
        cert_file.write_bytes(self.ca_pem)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        return ctx

    def kubeconfig(self, path: str | Path, *, token: str | None = None, context: str = "fake") -> Path:
        """Write a kubeconfig that points the real ``kubernetes`` client at this server."""
        cluster = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake-user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake-user"}}],
        }
        path = Path(path)
        path.write_text(json.dumps(doc, indent=2))
        return path

    # --- authentication / authorization -------------------------------------------

    def issue_user_token(self, user: User) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = user
        return token

    def issue_token(self, namespace: str, service_account: str, *, audiences: tuple[str, ...] = ()) -> str:
        """A ServiceAccount token as the TokenRequest API would mint (bound to *audiences*)."""
        user = User(f"system:serviceaccount:{namespace}:{service_account}", uid=str(uuid.uuid4()),
                    groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
                    audiences=tuple(audiences))
        return self.issue_user_token(user)

    def revoke_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    def deny(self, verb: str, resource: str, *, group: str = "", namespace: str = "*",
             username: str = "kubernetes-admin") -> None:
        """Make the authorizer refuse *verb* on *resource* for *username* (403 and SSAR allowed=false)."""
        self._denied.add((username, verb, group, resource, namespace))

    def allowed(self, user: User, verb: str, group: str, resource: str, namespace: str) -> bool:
        for ns in (namespace or "*", "*"):
            if (user.username, verb, group, resource, ns) in self._denied:
                return False
            if (user.username, "*", group, resource, ns) in self._denied:
                return False
        return True

    # --- types -----------------------------------------------------------------

    def resource_types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def find_type(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        with self._lock:
            for rt in self._types.values():
                if rt.group == group and rt.version == version and rt.kind == kind:
                    return rt
        raise KeyError(f"no resource type for {api_version} {kind}")

    def _type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    # --- the store (also what tests use directly) --------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, rt: ResourceType, type_: str, obj: dict, old: dict | None) -> None:
        self._events.append(Event(int(obj["metadata"]["resourceVersion"]), (rt.group, rt.plural), type_,
                                  copy.deepcopy(obj), copy.deepcopy(old) if old else None))
        if len(self._events) > self.history:
            drop = len(self._events) - self.history
            self._compacted_rv = self._events[drop - 1].rv
            del self._events[:drop]
        self._lock.notify_all()

    def put(self, obj: dict) -> dict:
        """Create or replace *obj* as a controller would (no admission, status kept as given)."""
        obj = copy.deepcopy(obj)
        rt = self.find_type(obj["apiVersion"], obj["kind"])
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "") if rt.namespaced else ""
        if rt.namespaced and not ns:
            meta["namespace"] = ns = "default"
        with self._lock:
            bucket = self._objects.setdefault((rt.group, rt.plural), {})
            old = bucket.get((ns, meta["name"]))
            self._stamp(rt, obj, old)
            bucket[(ns, meta["name"])] = obj
            self._after_write(rt, obj, old)
            self._record(rt, "MODIFIED" if old else "ADDED", obj, old)
            return copy.deepcopy(obj)

    def put_all(self, objs) -> None:
        # CRDs first, as `kubectl apply` of a mixed stream needs them before their instances.
        objs = list(objs)
        for obj in sorted(objs, key=lambda o: (o["kind"] != "Namespace", o["kind"] != "CustomResourceDefinition")):
            self.put(obj)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> dict | None:
        rt = self.find_type(api_version, kind)
        with self._lock:
            obj = self._objects.get((rt.group, rt.plural), {}).get((namespace if rt.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        rt = self.find_type(api_version, kind)
        with self._lock:
            return [copy.deepcopy(o) for (ns, _), o in sorted(self._objects.get((rt.group, rt.plural), {}).items())
                    if namespace is None or ns == namespace]

    def remove(self, api_version: str, kind: str, name: str, namespace: str = "") -> None:
        rt = self.find_type(api_version, kind)
        with self._lock:
            self._delete(rt, namespace if rt.namespaced else "", name)

    def compact(self) -> int:
        """Forget all watch history (etcd compaction): watches from an older resourceVersion get 410."""
        with self._lock:
            self._compacted_rv = self._rv
            self._events.clear()
            return self._rv

    def close_watches(self) -> None:
        """End every open watch stream, as an apiserver restart or a load balancer timeout would."""
        with self._lock:
            self._watch_generation += 1
            self._lock.notify_all()

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def _stamp(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        meta = obj["metadata"]
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta["resourceVersion"] = str(self._next_rv())
        if old:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            gen = old["metadata"].get("generation", 1)
            if rt.status_subresource and obj.get("spec") != old.get("spec"):
                gen += 1
            if "generation" in old["metadata"] or rt.status_subresource:
                meta["generation"] = gen
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if rt.status_subresource or not rt.builtin:
                meta.setdefault("generation", 1)

    def _after_write(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        """Side effects the real control plane has on a write."""
        if rt.kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        if rt.kind == "CustomResourceDefinition":
            # The apiextensions controller accepts the names and establishes the CRD at once.
            if old:
                for old_rt in crd_types(old):
                    self._types.pop((old_rt.group, old_rt.version, old_rt.plural), None)
            for new_rt in crd_types(obj):
                self._types[(new_rt.group, new_rt.version, new_rt.plural)] = new_rt
            obj["status"] = {
                "acceptedNames": obj["spec"]["names"],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": _now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": _now()},
                ],
                "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
            }
        if rt.kind == "Service" and not old:
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") != "None":
                n = self._rv % 65000
                spec.setdefault("clusterIP", f"10.96.{n // 250}.{n % 250 + 1}")
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports", []):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        if rt.kind == "Pod" and not old:
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
            obj.setdefault("spec", {}).setdefault("serviceAccountName", "default")

    def _delete(self, rt: ResourceType, ns: str, name: str) -> dict:
        bucket = self._objects.get((rt.group, rt.plural), {})
        obj = bucket.pop((ns, name), None)
        if obj is None:
            raise not_found(rt, name)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._record(rt, "DELETED", obj, None)
        if rt.kind == "Namespace":
            for (group, plural), objs in list(self._objects.items()):
                for (ons, oname) in [k for k in objs if k[0] == name]:
                    sub = next(t for t in self._types.values() if t.group == group and t.plural == plural)
                    self._delete(sub, ons, oname)
        if rt.kind == "CustomResourceDefinition":
            for crt in crd_types(obj):
                for (ons, oname) in list(self._objects.get((crt.group, crt.plural), {})):
                    self._delete(crt, ons, oname)
                self._types.pop((crt.group, crt.version, crt.plural), None)
        return obj

    # --- REST verbs ------------------------------------------------------------------

    def rest_get(self, rt, ns, name) -> dict:
        with self._lock:
            obj = self._objects.get((rt.group, rt.plural), {}).get((ns, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def rest_list(self, rt, ns, query) -> dict:
        label = selectors.label_selector(query.get("labelSelector"))
        field = selectors.field_selector(query.get("fieldSelector"))
        with self._lock:
            items = [copy.deepcopy(o) for (ons, _), o in sorted(self._objects.get((rt.group, rt.plural), {}).items())
                     if (not ns or ons == ns) and label(o) and field(o)]
            rv = str(self._rv)
        start = int(base64.b64decode(query["continue"]).decode()) if query.get("continue") else 0
        meta = {"resourceVersion": rv}
        limit = int(query.get("limit") or 0)
        items = items[start:]
        if limit and len(items) > limit:
            meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if rt.builtin:
            # Items of built-in lists carry no apiVersion/kind, as the real server encodes them.
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items}

    def _check_name(self, rt, meta):
        name = meta.get("name", "")
        if not name and meta.get("generateName"):
            name = meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            raise ApiError(422, "Invalid", f"{rt.kind} \"\" is invalid: metadata.name: Required value: name or "
                                           "generateName is required",
                           {"kind": rt.kind, "causes": [{"reason": "FieldValueRequired", "field": "metadata.name",
                                                         "message": "Required value: name or generateName is required"}]})
        pattern = _SYSTEM_NAME if rt.group == "rbac.authorization.k8s.io" else _NAME
        if len(name) > 253 or not pattern.match(name):
            raise ApiError(422, "Invalid", f"{rt.kind} \"{name}\" is invalid: metadata.name: Invalid value: "
                                           f"\"{name}\": a lowercase RFC 1123 subdomain must consist of lower case "
                                           "alphanumeric characters, '-' or '.', and must start and end with an "
                                           "alphanumeric character",
                           {"name": name, "kind": rt.kind})
        return name

    def _check_body(self, rt, ns, body):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise ApiError(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not "
                                              f"match the expected API version ({rt.api_version})"
                           if body.get("apiVersion") != rt.api_version else
                           f"the kind in the data ({body.get('kind')}) does not match the expected kind ({rt.kind})")
        meta = body.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                                  "sent on the request")
            meta["namespace"] = ns
            if ("", ns) not in self._objects.get(("", "namespaces"), {}):
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
        else:
            meta.pop("namespace", None)

    def rest_create(self, rt, ns, body, user, dry_run=False) -> dict:
        if rt.kind == "TokenReview":
            return self._token_review(body)
        if rt.kind in ("SelfSubjectAccessReview", "SubjectAccessReview"):
            return self._access_review(rt, body, user)
        if isinstance(body, dict) and not dry_run:
            body = admission.mutate(self, rt, ns, body, user)
        with self._lock:
            self._check_body(rt, ns, body)
            name = self._check_name(rt, body["metadata"])
            bucket = self._objects.setdefault((rt.group, rt.plural), {})
            if (ns, name) in bucket:
                res = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
                raise ApiError(409, "AlreadyExists", f'{res} "{name}" already exists',
                               {"name": name, "group": rt.group, "kind": rt.plural})
            body["metadata"].pop("resourceVersion", None)
            if rt.status_subresource and rt.kind not in ("Namespace",):
                # Status is not settable on create for types with a status subresource.
                body.pop("status", None)
            if dry_run:
                return body
            self._stamp(rt, body, None)
            bucket[(ns, name)] = body
            self._after_write(rt, body, None)
            self._record(rt, "ADDED", body, None)
            return copy.deepcopy(body)

    def rest_update(self, rt, ns, name, body, *, subresource: str = "") -> dict:
        with self._lock:
            current = self.rest_get(rt, ns, name)
            self._check_body(rt, ns, body)
            if body["metadata"].get("name") != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            rv = body["metadata"].get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                res = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res} "{name}": the object has '
                                                "been modified; please apply your changes to the latest version "
                                                "and try again", {"name": name, "group": rt.group, "kind": rt.plural})
            return self._write(rt, ns, name, current, body, subresource)

    def rest_patch(self, rt, ns, name, patch, content_type, *, subresource: str = "") -> dict:
        with self._lock:
            current = self.rest_get(rt, ns, name)
            try:
                if content_type.startswith("application/json-patch+json"):
                    new = patches.json_patch(current, patch)
                elif content_type.startswith("application/merge-patch+json"):
                    new = patches.merge_patch(current, patch)
                elif content_type.startswith("application/strategic-merge-patch+json"):
                    if not rt.builtin:
                        raise ApiError(415, "UnsupportedMediaType",
                                       "the body of the request was in an unknown format - accepted media types "
                                       "include: application/json-patch+json, application/merge-patch+json, "
                                       "application/apply-patch+yaml")
                    new = patches.strategic_merge_patch(current, patch)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                                                                f"format - accepted media types include: "
                                                                "application/json-patch+json, "
                                                                "application/merge-patch+json, "
                                                                "application/strategic-merge-patch+json")
            except patches.PatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
            rv = (new.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.plural} "{name}": the object '
                                                "has been modified; please apply your changes to the latest version "
                                                "and try again")
            return self._write(rt, ns, name, current, new, subresource)

    def _write(self, rt, ns, name, current, new, subresource):
        if subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = new.get("status")
            new = merged
        elif rt.status_subresource and rt.kind != "Namespace":
            new["status"] = current.get("status")
            if new["status"] is None:
                new.pop("status")
        new.setdefault("metadata", {})["name"] = name
        if rt.namespaced:
            new["metadata"]["namespace"] = ns
        self._objects[(rt.group, rt.plural)][(ns, name)] = new
        self._stamp(rt, new, current)
        self._after_write(rt, new, current)
        self._record(rt, "MODIFIED", new, current)
        return copy.deepcopy(new)

    def rest_delete(self, rt, ns, name) -> dict:
        with self._lock:
            obj = self._delete(rt, ns, name)
        if rt.kind == "Pod":
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            return obj
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Terminating"}
            obj["metadata"]["deletionTimestamp"] = _now()
            return obj
        details = {"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]}
        if rt.group:
            details["group"] = rt.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _token_review(self, body) -> dict:
        # authentication.k8s.io/v1: an unknown token or a token whose audiences do not
        # intersect the requested ones is "authenticated: false" with an error, not an HTTP error.
        spec = body.get("spec") or {}
        user = self._tokens.get(spec.get("token", ""))
        wanted = list(spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"])
        out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": None}, "spec": spec}
        if user is None:
            out["status"] = {"authenticated": False, "error": "[invalid bearer token, token lookup failed]",
                             "user": {}}
            return out
        token_auds = list(user.audiences or ["https://kubernetes.default.svc.cluster.local"])
        common = [a for a in wanted if a in token_auds]
        if not common:
            out["status"] = {"authenticated": False, "error": "[invalid bearer token, token audiences "
                                                              f"{json.dumps(token_auds)} is invalid for the target "
                                                              f"audiences {json.dumps(wanted)}]", "user": {}}
            return out
        out["status"] = {"authenticated": True, "audiences": common,
                         "user": {"username": user.username, "uid": user.uid, "groups": list(user.groups)}}
        return out

    def _access_review(self, rt, body, user) -> dict:
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        who = user
        if rt.kind == "SubjectAccessReview":
            who = User(spec.get("user", ""))
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource += "/" + attrs["subresource"]
        allowed = self.allowed(who, attrs.get("verb", ""), attrs.get("group", ""), resource,
                               attrs.get("namespace", ""))
        out = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"creationTimestamp": None}, "spec": spec,
               "status": {"allowed": allowed}}
        if allowed:
            out["status"]["reason"] = "allowed by the fake authorizer"
        return out

    # --- watch ---------------------------------------------------------------------

    def events_since(self, rt, rv: int):
        """(events after rv for this type, current rv) or raises Gone."""
        if rv < self._compacted_rv:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted_rv + 1})")
        key = (rt.group, rt.plural)
        return [e for e in self._events if e.rv > rv and e.key == key], self._rv


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-watch are normal; stay quiet like the real server.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"
    server_version = "fakekube"

    def log_message(self, *args):
        pass

    def date_time_string(self, timestamp=None):
        return super().date_time_string((timestamp or time.time()) + self.kube.clock_offset)

    # Every verb goes through one dispatcher.
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _send(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format") from None

    def _user(self) -> User:
        auth = self.headers.get("Authorization", "")
        user = self.kube._tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if user is None or user.audiences:
            # Tokens bound to another audience (identity.meshctl.io) do not authenticate to the API server.
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        self.kube.requests.append((method, self.path))
        try:
            if url.path in ("/healthz", "/readyz", "/livez"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(data)
                return
            user = self._user()
            proxied = _SERVICE_PROXY.match(url.path)
            if proxied:
                return self._service_proxy(method, proxied, url.query, user)
            api_service = self._api_service(url.path)
            if api_service is not None:
                return self._aggregated(method, api_service, url, user)
            self._route(method, url.path, query, user)
        except ApiError as exc:
            self._send(exc.code, exc.body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except selectors.SelectorError as exc:
            self._send(400, status(400, "BadRequest", str(exc)))

    def _service_proxy(self, method: str, m, query: str, user) -> None:
        """``/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH``: the API server relays
        the request to the Service (``kubectl proxy``, ``linkerd viz`` reach Prometheus so); here
        to what ``service_endpoints`` says serves that port."""
        ns, ref, rest = m.group("ns"), urllib.parse.unquote(m.group("ref")), m.group("rest") or "/"
        parts = ref.split(":")
        name, port = (parts[1], parts[2]) if len(parts) == 3 else (parts[0], parts[1] if len(parts) > 1 else "")
        # The verb of a proxy subresource is the method's (GET: get, POST: create), as RequestInfoFactory says.
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if not self.kube.allowed(user, verb, "", "services/proxy", ns):
            raise ApiError(403, "Forbidden", f'services "{name}" is forbidden: User "{user.username}" cannot {verb} '
                                             f'resource "services/proxy" in API group "" in the namespace "{ns}"')
        svc = self.kube.get("v1", "Service", name, ns)
        if svc is None:
            raise ApiError(404, "NotFound", f'services "{name}" not found')
        ports = [p for p in svc["spec"].get("ports", []) if not port or str(p.get("port")) == port
                 or p.get("name") == port]
        backend = self.kube.service_endpoints.get((ns, name, int(ports[0]["port"]))) if ports else None
        if backend is None:
            raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')

        try:
            aggregation.relay(self, method, backend, rest + (f"?{query}" if query else ""))
        except OSError as exc:
            raise ApiError(503, "ServiceUnavailable", f"error trying to reach service: {exc}") from None

    def _api_service(self, path: str) -> dict | None:
        """The APIService serving *path* (``/apis/GROUP/VERSION/...``) from a Service, if any."""
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "apis":
            return None
        svc = self.kube.get("apiregistration.k8s.io/v1", "APIService", f"{parts[2]}.{parts[1]}")
        return svc if svc is not None and (svc.get("spec") or {}).get("service") else None

    def _aggregated(self, method: str, api_service: dict, url, user) -> None:
        """kube-aggregator: authorise as for any request, then relay to the APIService's Service over TLS,
        naming the caller in X-Remote-User/X-Remote-Group and presenting the front-proxy certificate."""
        spec = api_service["spec"]
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        verb, ns, resource, name, sub = aggregation.request_info(method, parts[3:])
        res = f"{resource}/{sub}" if sub else resource
        if resource and not self.kube.allowed(user, verb, spec["group"], res, ns):
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise ApiError(403, "Forbidden", f'{resource}.{spec["group"]} "{name}" is forbidden: User '
                                             f'"{user.username}" cannot {verb} resource "{res}" in API group '
                                             f'"{spec["group"]}"{where}')
        svc = spec["service"]
        port = int(svc.get("port") or 443)
        backend = self.kube.service_endpoints.get((svc["namespace"], svc["name"], port))
        if backend is None or self.kube.get("v1", "Service", svc["name"], svc["namespace"]) is None:
            raise ApiError(503, "ServiceUnavailable", f'service "{svc["namespace"]}/{svc["name"]}" is not available')
        context = aggregation.backend_context(self.kube.front_proxy, api_service)
        try:
            aggregation.relay(self, method, backend, url.path + (f"?{url.query}" if url.query else ""),
                              context=context, server_name=f'{svc["name"]}.{svc["namespace"]}.svc',
                              extra_headers={aggregation.USER_HEADER: user.username}, groups=user.groups)
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(503, "ServiceUnavailable", f"error trying to reach service: {exc}") from None

    def _route(self, method, path, query, user) -> None:
        kube = self.kube
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if method == "GET" and parts == ["version"]:
            major, minor = kube.git_version.lstrip("v").split(".")[:2]
            return self._send(200, {"major": major, "minor": minor, "gitVersion": kube.git_version,
                                    "gitCommit": "0" * 40, "gitTreeState": "clean",
                                    "buildDate": "2024-08-13T07:28:49Z", "goVersion": "go1.22.5",
                                    "compiler": "gc", "platform": "linux/amd64"})
        if method == "GET" and parts == ["api"]:
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server.server_address[0] + ":" +
                 str(self.server.server_address[1])}]})
        if method == "GET" and parts == ["apis"]:
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            if len(parts) == 2:
                for g in self._groups():
                    if g["name"] == parts[1]:
                        return self._send(200, {"kind": "APIGroup", "apiVersion": "v1", **g})
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with kube._lock:
            types = [t for t in kube._types.values() if t.group == group and t.version == version]
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                        "resource")
            return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": f"{group}/{version}" if group else version,
                                    "resources": self._resources(types)})
        ns = ""
        by_plural = {t.plural: t for t in types}
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in by_plural and by_plural[rest[2]].namespaced:
            ns, rest = rest[1], rest[2:]
        rt = by_plural.get(rest[0])
        if rt is None or (not ns and rt.namespaced and len(rest) > 1):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        watching = query.get("watch") in ("true", "1")
        verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[method]
        if verb not in rt.verbs:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if not kube.allowed(user, verb, rt.group, rt.plural, ns):
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            what = f'{rt.plural} "{name}"' if name else rt.plural
            raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user.username}" cannot {verb} resource '
                                             f'"{rt.plural}" in API group "{rt.group}"{where}',
                           {"name": name, "group": rt.group, "kind": rt.plural} if name else
                           {"group": rt.group, "kind": rt.plural})
        if verb == "watch":
            return self._watch(rt, ns, name, query)
        if verb == "get":
            return self._send(200, kube.rest_get(rt, ns, name))
        if verb == "list":
            return self._send(200, kube.rest_list(rt, ns, query))
        if verb == "create":
            if name:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                        "resource")
            created = kube.rest_create(rt, ns, self._read_body(), user, dry_run=query.get("dryRun") == "All")
            return self._send(201, created)
        if verb == "update":
            return self._send(200, kube.rest_update(rt, ns, name, self._read_body(), subresource=sub))
        if verb == "patch":
            return self._send(200, kube.rest_patch(rt, ns, name, self._read_body(),
                                                   self.headers.get("Content-Type", ""), subresource=sub))
        if verb == "delete":
            self._read_body()  # DeleteOptions: propagation is immediate here
            return self._send(200, kube.rest_delete(rt, ns, name))
        if verb == "deletecollection":
            listed = kube.rest_list(rt, ns, query)
            for item in listed["items"]:
                kube.rest_delete(rt, item["metadata"].get("namespace", ""), item["metadata"]["name"])
            listed["items"] = []
            return self._send(200, listed)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _groups(self) -> list[dict]:
        groups: dict[str, list[str]] = {}
        for t in self.kube.resource_types():
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        out = []
        for name, versions in groups.items():
            gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
            out.append({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
        return out

    @staticmethod
    def _resources(types) -> list[dict]:
        out = []
        for t in types:
            out.append(t.discovery_entry())
            if t.status_subresource:
                out.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                            "kind": t.kind, "verbs": ["get", "patch", "update"]})
        return out

    # --- watch streaming -------------------------------------------------------------

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, rt, ns, name, query) -> None:
        kube = self.kube
        label = selectors.label_selector(query.get("labelSelector"))
        field = selectors.field_selector(query.get("fieldSelector"))
        if name:
            field_name = selectors.field_selector(f"metadata.name={name}")
            field = (lambda o, f=field, n=field_name: f(o) and n(o))
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + timeout

        def visible(obj):
            return obj is not None and (not ns or obj["metadata"].get("namespace") == ns) and label(obj) and field(obj)

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rv_param = query.get("resourceVersion", "")
        with kube._lock:
            generation = kube._watch_generation
            if rv_param in ("", "0"):
                initial = [copy.deepcopy(o) for (ons, _), o in sorted(kube._objects.get((rt.group, rt.plural),
                                                                                        {}).items()) if visible(o)]
                cursor = kube._rv
            else:
                initial = []
                try:
                    cursor = int(rv_param)
                except ValueError:
                    cursor = -1
                if cursor < 0:
                    self._chunk({"type": "ERROR", "object": status(400, "BadRequest",
                                                                   f"invalid resource version {rv_param!r}")})
                    return self._end()
        for obj in initial:
            self._chunk({"type": "ADDED", "object": obj})
        last_bookmark = time.monotonic()
        while True:
            with kube._lock:
                try:
                    events, current = kube.events_since(rt, cursor)
                    if not events:
                        kube._lock.wait(0.1)
                        events, current = kube.events_since(rt, cursor)
                except ApiError as exc:
                    self._chunk({"type": "ERROR", "object": exc.body})
                    return self._end()
                closed = kube._watch_generation != generation
            for ev in events:
                cursor = ev.rv
                now_in, was_in = visible(ev.obj), visible(ev.old)
                if ev.type == "MODIFIED" and now_in and not was_in:
                    self._chunk({"type": "ADDED", "object": ev.obj})
                elif ev.type == "MODIFIED" and was_in and not now_in:
                    self._chunk({"type": "DELETED", "object": ev.obj})
                elif now_in:
                    self._chunk({"type": ev.type, "object": ev.obj})
            if not events and cursor < current:
                cursor = current  # other types' events: the stream is at the current version
            if closed:
                # An apiserver going away drops the connection, not just the stream.
                self.close_connection = True
                return self._end()
            if time.monotonic() >= deadline:
                return self._end()
            if bookmarks and time.monotonic() - last_bookmark >= kube.bookmark_interval:
                self._chunk({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version,
                                                            "metadata": {"resourceVersion": str(cursor)}}})
                last_bookmark = time.monotonic()

    def _end(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
