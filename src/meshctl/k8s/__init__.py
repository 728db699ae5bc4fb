"""The one module that imports the ``kubernetes`` client.

Everything else in meshctl asks this module for cluster data and receives
plain dicts, so cores stay pure and the client is only imported (slowly: about
0.3 s) by commands that really talk to a cluster.

:class:`Cluster` is the whole surface: REST verbs on any resource by
``apiVersion`` and plural (the client's configuration, TLS and auth, but not
its model classes: responses stay the JSON the server sent), ``watch`` as a
generator of ``(type, object)``, and the reviews (TokenReview,
SelfSubjectAccessReview) the controllers and ``check`` need.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from meshctl.errors import ClusterError


class ApiStatusError(ClusterError):
    """The API server answered with an error Status (``code``, ``reason``, ``message``)."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.status_message = message


class KubeconfigError(ClusterError):
    """The kubeconfig cannot be loaded (missing, malformed, unknown context): nothing was asked of a cluster."""


def kubeconfig_path(kubeconfig: str | None) -> str:
    """The file(s) the client reads: --kubeconfig (or $KUBECONFIG, which the root flag reads), else ~/.kube/config."""
    import os

    return kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def kubeconfig_namespace(opts) -> str | None:
    """The namespace of the kubeconfig's context (``--context``, else current-context), or None.

    Read with PyYAML, not the client (0.3 s to import), as kubectl resolves it: the files of
    ``--kubeconfig`` or ``$KUBECONFIG`` (a ``:``-separated list, the first definition of a
    name winning), else ``~/.kube/config``.  An absent or unreadable kubeconfig gives None:
    linkerd falls back to ``default`` then, and so do its callers here.
    """
    import os

    import yaml

    contexts: dict = {}
    current = None
    for path in kubeconfig_path(opts.kubeconfig).split(os.pathsep):
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as fh:
                doc = yaml.safe_load(fh)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        current = current or doc.get("current-context")
        for entry in doc.get("contexts") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                contexts.setdefault(entry["name"], entry.get("context") or {})
    context = contexts.get(opts.context or current)
    namespace = context.get("namespace") if isinstance(context, dict) else None
    return namespace if isinstance(namespace, str) and namespace else None


class WatchExpired(ApiStatusError):
    """The watch's resourceVersion is too old (410 Gone / Expired): list again, then watch."""


def preload() -> None:
    """Import the client library now (about 1 s; several on a busy machine).

    Commands with deadlines (``check --wait``) call this before starting
    their clock: an import cannot hang, so it must not eat a check's time.
    """
    import kubernetes.client  # noqa: F401


def _load_configuration(*, kubeconfig: str | None, context: str | None):
    try:
        from kubernetes import client, config
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ClusterError(f"the kubernetes client is not installed: {exc}") from None
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except Exception as exc:  # kubernetes raises ConfigException, TypeError, OSError...
        try:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
        except Exception:
            where = kubeconfig_path(kubeconfig) + (f" (context {context!r})" if context else "")
            raise KubeconfigError(f"cannot load kubeconfig {where}: {exc}") from None
    cfg.retries = False
    return cfg


def _api_client(opts) -> Any:
    from kubernetes import client

    return client.ApiClient(_load_configuration(kubeconfig=opts.kubeconfig, context=opts.context))


def resource_path(api_version: str, plural: str, *, namespace: str = "", name: str = "", subresource: str = "") -> str:
    """The REST path of a collection or object: ``/api/v1/namespaces/NS/pods/NAME``."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{urllib.parse.quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{urllib.parse.quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


class Cluster:
    """A connection to one API server, speaking plain dicts."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None, timeout: float = 10.0):
        from kubernetes import client

        self._cfg = _load_configuration(kubeconfig=kubeconfig, context=context)
        self._client = client.ApiClient(self._cfg)
        self.timeout = timeout

    @classmethod
    def from_options(cls, opts, *, timeout: float = 10.0) -> "Cluster":
        return cls(kubeconfig=opts.kubeconfig, context=opts.context, timeout=timeout)

    @property
    def host(self) -> str:
        return self._cfg.host

    def close(self) -> None:
        self._client.close()

    # --- raw requests ------------------------------------------------------------------

    def _request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                 content_type: str = "application/json", timeout: float | tuple | None = None, stream: bool = False):
        params = [(k, v) for k, v in (query or {}).items() if v is not None and v != ""]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            method, url, headers, body, _ = self._client.param_serialize(
                method=method, resource_path=path, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"])
            resp = self._client.call_api(method, url, header_params=headers, body=body,
                                         _request_timeout=timeout or self.timeout)
        except Exception as exc:  # urllib3 errors: connection refused, TLS, timeouts
            raise ClusterError(f"cannot reach the Kubernetes API at {self._cfg.host}: {_short(exc)}") from None
        if stream and 200 <= resp.status < 300:
            return resp
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if not 200 <= resp.status < 300:
            if isinstance(data, dict) and data.get("kind") == "Status":
                raise ApiStatusError(resp.status, data.get("reason", ""), data.get("message", ""))
            raise ApiStatusError(resp.status, resp.reason or "", raw[:200].decode(errors="replace"))
        return data

    def raw_get(self, path: str, query: list[tuple[str, str]] | None = None) -> tuple[int, bytes, str]:
        """GET *path* and return (status, body, content type) whatever the status: for proxied
        services, whose errors are theirs to describe.  Unreachable API server: ClusterError."""
        try:
            method, url, headers, body, _ = self._client.param_serialize(
                method="GET", resource_path=path, query_params=list(query or []), header_params={},
                auth_settings=["BearerToken"])
            resp = self._client.call_api(method, url, header_params=headers, _request_timeout=self.timeout)
        except Exception as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self._cfg.host}: {_short(exc)}") from None
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""

    # --- verbs ------------------------------------------------------------------------

    def version(self) -> dict:
        return self._request("GET", "/version")

    def server_time(self) -> float:
        """The API server's clock (its ``Date`` header), as a POSIX timestamp."""
        import email.utils

        resp = self._request("GET", "/version", stream=True)
        date = resp.getheader("Date")
        resp.read()
        if not date:
            raise ClusterError("the API server sent no Date header")
        return email.utils.parsedate_to_datetime(date).timestamp()

    def api_resources(self, group_version: str) -> dict | None:
        """The APIResourceList of a group/version, or None when the server does not serve it."""
        path = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        try:
            return self._request("GET", path)
        except ApiStatusError as exc:
            if exc.code == 404:
                return None
            raise

    def get(self, api_version: str, plural: str, name: str, *, namespace: str = "") -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return self._request("GET", resource_path(api_version, plural, namespace=namespace, name=name))
        except ApiStatusError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, api_version: str, plural: str, *, namespace: str = "", label_selector: str = "",
             field_selector: str = "") -> dict:
        """The list object (``items`` and ``metadata.resourceVersion``), following ``continue`` tokens."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": 500}
        out = None
        while True:
            page = self._request("GET", resource_path(api_version, plural, namespace=namespace), query=query)
            if out is None:
                out = page
            else:
                out["items"].extend(page["items"])
                out["metadata"] = page["metadata"]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out
            query["continue"] = token

    def create(self, api_version: str, plural: str, body: dict, *, namespace: str = "") -> dict:
        return self._request("POST", resource_path(api_version, plural, namespace=namespace), body=body)

    def patch(self, api_version: str, plural: str, name: str, patch: Any, *, namespace: str = "",
              subresource: str = "", content_type: str = "application/merge-patch+json") -> dict:
        path = resource_path(api_version, plural, namespace=namespace, name=name, subresource=subresource)
        return self._request("PATCH", path, body=patch, content_type=content_type)

    def delete(self, api_version: str, plural: str, name: str, *, namespace: str = "") -> bool:
        """Delete; False when it was already gone."""
        try:
            self._request("DELETE", resource_path(api_version, plural, namespace=namespace, name=name))
        except ApiStatusError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def watch(self, api_version: str, plural: str, *, namespace: str = "", resource_version: str = "",
              label_selector: str = "", timeout_seconds: int = 300, bookmarks: bool = True) -> Iterator[tuple[str, dict]]:
        """Stream ``(type, object)`` events; raises :class:`WatchExpired` on 410 (list again, then watch).

        The stream ends when the server closes it (timeoutSeconds, restart):
        callers watch again from the last resourceVersion they saw.
        """
        query = {"watch": "true", "resourceVersion": resource_version, "labelSelector": label_selector,
                 "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true" if bookmarks else None}
        resp = self._request("GET", resource_path(api_version, plural, namespace=namespace), query=query,
                             timeout=(self.timeout, timeout_seconds + 30), stream=True)
        try:
            for line in LineStream(resp, what=f"watch {plural}"):
                try:
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ClusterError(f"watch {plural} interrupted: not an event ({_short(exc)})") from None
                if kind == "ERROR":
                    obj = obj or {}
                    cls = WatchExpired if obj.get("code") in (410,) else ApiStatusError
                    raise cls(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
                yield kind, obj
        finally:
            resp.response.release_conn()

    # --- reviews ------------------------------------------------------------------------

    def token_review(self, token: str, *, audiences: list[str]) -> dict:
        """The TokenReview status (authenticated, user, audiences, error)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": list(audiences)}}
        return self.create("authentication.k8s.io/v1", "tokenreviews", body).get("status") or {}

    def can_i(self, verb: str, resource: str, *, group: str = "", namespace: str = "") -> bool:
        """SelfSubjectAccessReview: may the current user do *verb* on *resource*?"""
        attrs = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}
        return bool((self.create("authorization.k8s.io/v1", "selfsubjectaccessreviews", body).get("status") or {})
                    .get("allowed"))


    def subject_access_review(self, user: str, groups: tuple[str, ...] | list[str], attrs: dict) -> bool:
        """SubjectAccessReview: may *user* (in *groups*) do what *attrs* (resourceAttributes) say?
        What an aggregated API server asks about the callers the API server relays (``system:auth-delegator``)."""
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": list(groups), "resourceAttributes": dict(attrs)}}
        return bool((self.create("authorization.k8s.io/v1", "subjectaccessreviews", body).get("status") or {})
                    .get("allowed"))

    def stream_lines(self, method: str, path: str, body: Any, *, connect_timeout: float | None = None) -> "LineStream":
        """Send *body* (JSON) and return the response's lines as they arrive (an aggregated API's
        stream: tap).  An error status raises :class:`ApiStatusError` with the server's message."""
        resp = self._request(method, path, body=body, stream=True,
                             timeout=(connect_timeout or self.timeout, None))
        return LineStream(resp, what=path.rsplit("/", 1)[-1])


class LineStream:
    """The non-empty lines of a streamed response body (a watch, tap); a connection cut mid-stream
    raises ClusterError ("WHAT interrupted: ..."); :meth:`close` from another thread ends the iteration."""

    def __init__(self, resp, *, what: str = "stream") -> None:
        self._resp = resp.response  # urllib3's, under the client's RESTResponse
        self.what = what

    def __iter__(self) -> Iterator[bytes]:
        buffer = b""
        try:
            for chunk in self._resp.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield line
        except Exception as exc:  # the connection broke mid-stream (urllib3's ProtocolError, ...)
            raise ClusterError(f"{self.what} interrupted: {_short(exc)}") from None
        if buffer.strip():
            yield buffer

    def close(self) -> None:
        try:
            self._resp.shutdown() if hasattr(self._resp, "shutdown") else self._resp.close()
        except Exception:
            pass


def pod_port_forward(opts, namespace: str, pod: str, port: int):
    """One ``pods/portforward`` stream to *pod*'s *port* through the API server (what ``kubectl
    port-forward`` opens per connection): returns ``(stream, socket)``; close both when done.
    Failures raise the client's exceptions (``ApiException``, websocket errors), for the caller to word."""
    from kubernetes import client
    from kubernetes.stream import portforward

    core = client.CoreV1Api(_api_client(opts))
    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
    return pf, pf.socket(port)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def get_config_map(opts, namespace: str, name: str, *, timeout: float = 10.0) -> dict | None:
    """The ConfigMap's ``data``, or None when it does not exist."""
    cm = Cluster.from_options(opts, timeout=timeout).get("v1", "configmaps", name, namespace=namespace)
    return None if cm is None else dict(cm.get("data") or {})


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


class KubernetesTokenReviewer:
    """The identity service's token review, by the TokenReview API (as Linkerd's identity controller does).

    The token must authenticate *and* the API server must confirm our audience
    among the reviewed ones: a token minted for another audience (the API
    server's own, say) proves nothing to the identity service.
    """

    def __init__(self, cluster: Cluster, *, audience: str | None = None):
        from meshctl_proxy.config import IDENTITY_AUDIENCE

        self.cluster = cluster
        self.audience = audience or IDENTITY_AUDIENCE

    def review(self, token: str):
        from meshctl.identity.tokens import ServiceAccountRef, TokenRejected

        try:
            status = self.cluster.token_review(token, audiences=[self.audience])
        except ClusterError as exc:
            return TokenRejected(f"token review failed: {exc}")
        if not status.get("authenticated"):
            return TokenRejected(f"token not authenticated: {status.get('error') or 'no reason given'}")
        if self.audience not in (status.get("audiences") or []):
            return TokenRejected(f"token is not meant for {self.audience}")
        username = (status.get("user") or {}).get("username", "")
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not all(parts[2:]):
            return TokenRejected(f"{username or 'the token'} is not a ServiceAccount")
        return ServiceAccountRef(namespace=parts[2], name=parts[3])


def token_reviewer(opts) -> KubernetesTokenReviewer:
    """The reviewer `meshctl identity serve` uses in a cluster (no --token-registry)."""
    return KubernetesTokenReviewer(Cluster.from_options(opts))


def service_proxy(cluster: Cluster, namespace: str, service: str, port: int):
    """An httpx transport reaching *service* through the API server's service proxy, and its URL.

    ``/api/v1/namespaces/NS/services/http:NAME:PORT/proxy/...`` is how ``kubectl proxy``
    and ``linkerd viz`` reach the viz Prometheus without a port-forward; the
    API server checks the caller may ``get services/proxy``.
    """
    import httpx

    base = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/services/http:{urllib.parse.quote(service)}:{port}/proxy"

    class ServiceProxyTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            query = urllib.parse.parse_qsl(request.url.query.decode(), keep_blank_values=True)
            status, body, content_type = cluster.raw_get(base + request.url.path, query)
            return httpx.Response(status, content=body, headers={"Content-Type": content_type}, request=request)

    return ServiceProxyTransport(), cluster.host.rstrip("/") + base
