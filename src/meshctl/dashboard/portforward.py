"""``meshctl dashboard`` against a cluster: a port-forward to the viz web deployment, as ``linkerd viz dashboard``.

What linkerd does (``viz/cmd/dashboard.go``, ``pkg/k8s/portforward.go``), and so we:

1. wait up to ``--wait`` for a Running, Ready pod of the ``web`` Deployment in the
   viz namespace (``<mesh namespace>-viz``: ``meshctl-viz`` by default), found through
   the Deployment's own selector, so whatever labels the manifests use;
2. listen on ``--address``:``--port`` here and, for each connection a browser opens,
   open a port-forward stream to the pod's port 8084 through the API server
   (``pods/portforward``: the same RBAC as ``kubectl port-forward``) and relay bytes
   both ways;
3. print the URLs, open a browser where a person sits, block until Ctrl-C.

The web deployment serves the same app as the local dashboard; it enforces its
Host as linkerd-web does, allowing ``localhost`` and ``127.0.0.1`` on any port, which is
what a browser sends through this port-forward.
"""

from __future__ import annotations

import socket
import threading
import time

from meshctl.errors import ClusterError, MeshctlError

WEB_DEPLOYMENT = "web"
WEB_PORT = 8084  # linkerd-web's port
POLL_S = 1.0
RELAY_CHUNK = 64 * 1024


def viz_namespace(mesh_namespace: str) -> str:
    return f"{mesh_namespace}-viz"


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def find_web_pod(cluster, namespace: str) -> tuple[str | None, str]:
    """The name of a Ready pod of the web Deployment, or None with why not."""
    deployment = cluster.get("apps/v1", "deployments", WEB_DEPLOYMENT, namespace=namespace)
    if deployment is None:
        raise MeshctlError(f"the viz extension is not installed: no deployment {WEB_DEPLOYMENT} in namespace "
                           f"{namespace} (install it with: meshctl viz install | kubectl apply -f -)")
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = cluster.list("v1", "pods", namespace=namespace, label_selector=selector).get("items", [])
    ready = sorted(p["metadata"]["name"] for p in pods if _ready(p))
    if ready:
        return ready[0], ""
    return None, f"{len(pods)} pod(s) of deployment/{WEB_DEPLOYMENT}, none Running and Ready"


def wait_for_web_pod(cluster, namespace: str, wait_s: float, report) -> str:
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        pod, why = find_web_pod(cluster, namespace)
        if pod is not None:
            return pod
        if time.monotonic() >= deadline:
            raise MeshctlError(f"the dashboard is not available after waiting {wait_s:g}s: {why} in namespace "
                               f"{namespace} (kubectl -n {namespace} get pods)")
        if not said:
            report(f"Waiting for the dashboard to become available ({why} in namespace {namespace})")
            said = True
        time.sleep(POLL_S)


class PortForward:
    """Relays each local connection to the pod's port through its own ``pods/portforward`` stream."""

    def __init__(self, global_options, namespace: str, pod: str, port: int, report) -> None:
        self.global_options = global_options
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self.report = report
        self.threads: set[threading.Thread] = set()  # kept, never fire-and-forget (STYLE 10)

    def _open(self):
        from meshctl import k8s

        return k8s.pod_port_forward(self.global_options, self.namespace, self.pod, self.port)

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            self.threads.add(t)
            t.start()
            self.threads = {x for x in self.threads if x.is_alive()}

    def _relay(self, conn: socket.socket) -> None:
        try:
            pf, remote = self._open()
        except Exception as exc:  # the client raises ApiException, WebSocketException, OSError...
            self.report(f"port-forward to pod/{self.pod} in {self.namespace}: {_short(exc)}")
            conn.close()
            return
        remote.setblocking(True)

        def pump(src, dst) -> None:
            try:
                while data := src.recv(RELAY_CHUNK):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(remote, conn), daemon=True)
        back.start()
        pump(conn, remote)
        back.join()
        conn.close()
        remote.close()
        pf.close()


def _short(exc: Exception) -> str:
    """One line: the API server's status and message where it gave one (websocket-client's exception
    carries the whole response), else the exception's first line."""
    import json

    code = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    body = getattr(exc, "resp_body", None) or getattr(exc, "body", None)
    if code:
        try:
            message = json.loads(body).get("message") if body else None
        except (ValueError, AttributeError):
            message = None
        return f"the API server answered {code}" + (f": {message}" if message else "")
    # kubernetes.stream wraps the handshake's failure as ApiException(status=0, reason="Handshake status
    # 404 Not Found -+-+- {headers} -+-+- {body}"): keep the status line and the Status message.
    reason = str(getattr(exc, "reason", "") or exc).strip()
    parts = reason.split(" -+-+- ")
    if len(parts) == 3:
        try:
            message = json.loads(parts[2]).get("message")
        except (ValueError, AttributeError):
            message = None
        return f"{parts[0]}" + (f": {message}" if message else "")
    text = reason.splitlines()
    return text[0] if text else type(exc).__name__


def main(options, global_options, *, out, report) -> None:
    from meshctl import k8s
    from meshctl.dashboard import launch, serve

    namespace = viz_namespace(global_options.mesh_namespace)
    try:
        cluster = k8s.Cluster.from_options(global_options)
    except ClusterError as exc:
        raise ClusterError(f"{exc} (without a cluster: meshctl demo up, or meshctl dashboard --prometheus-url URL)") from None
    try:
        pod = wait_for_web_pod(cluster, namespace, options.wait_s, report)
    finally:
        cluster.close()
    listener = serve.bind(options.address, options.port)
    launch.announce(listener.url, options, out=out, report=report)
    forward = PortForward(global_options, namespace, pod, WEB_PORT, report)
    stop = threading.Event()
    try:
        forward.serve(listener.sock, stop)
    except KeyboardInterrupt:
        pass  # Ctrl-C: the dashboard's user is done, not failed (exit 0, as linkerd's)
    finally:
        stop.set()
        listener.sock.close()
