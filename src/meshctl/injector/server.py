"""The proxy-injector's HTTPS server: the API server POSTs AdmissionReviews to ``/``.

A threaded ``http.server`` behind TLS (the API server verifies it with the
webhook's caBundle).  ``/ready`` and ``/live`` answer the kubelet's probes.
The pod's Namespace is read per request (its annotations may have changed)
with a short timeout: the webhook has ``timeoutSeconds`` to answer, and when
the Namespace cannot be read the pod is judged on its own annotations.
"""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import ssl
import threading
from collections.abc import Callable

from meshctl.injector import review
from meshctl.meshconfig import MeshConfig

log = logging.getLogger("meshctl.injector")

MAX_BODY = 3 * 1024 * 1024  # the API server caps requests at 3 MiB (etcd's object limit is 1.5 MiB)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class InjectorServer:
    def __init__(self, *, host: str, port: int, cert_file: str, key_file: str,
                 namespace_getter: Callable[[str], dict | None], mesh: Callable[[], MeshConfig]):
        self.namespace_getter = namespace_getter
        self.mesh = mesh
        handler = type("Handler", (_Handler,), {"injector": self})
        self._server = _Server((host, port), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self.reviewed = 0

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def start(self) -> "InjectorServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="proxy-injector", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def handle(self, body: dict) -> dict:
        request = body.get("request") or {}
        ns_name = request.get("namespace", "")
        try:
            ns = self.namespace_getter(ns_name) if ns_name else None
        except Exception as exc:
            log.warning("cannot read namespace %s (judging the pod on its own annotations): %s", ns_name, exc)
            ns = None
        self.reviewed += 1
        return review(body, namespace_obj=ns, mesh=self.mesh())


class _Handler(http.server.BaseHTTPRequestHandler):
    injector: InjectorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log.debug(fmt, *args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path in ("/ready", "/live"):
            return self._send(200, b"ok\n", "text/plain")
        self._send(404, b"not found\n", "text/plain")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._send(413, b'{"error": "request too large"}')
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
                raise ValueError("not an AdmissionReview")
        except ValueError as exc:
            # Nothing to admit: an AdmissionReview answer needs the request's uid.
            return self._send(400, json.dumps({"error": f"bad AdmissionReview: {exc}"}).encode())
        self._send(200, json.dumps(self.injector.handle(body)).encode())
