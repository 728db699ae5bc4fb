"""What the fake API server does as kube-aggregator and as the services proxy: relay to a backend.

- **API aggregation** (an ``APIService`` ``v1alpha1.tap.meshctl.io`` with ``spec.service``):
  after authenticating and authorising the caller itself, kube-apiserver forwards
  ``/apis/GROUP/VERSION/...`` to the Service over TLS, checking the backend's certificate
  against ``spec.caBundle`` for the name ``SERVICE.NAMESPACE.svc``, presenting its
  front-proxy client certificate (CN ``front-proxy-client``), and naming the caller in
  ``X-Remote-User`` / ``X-Remote-Group``.  The backend trusts those headers only from a
  client whose certificate chains to the request-header CA, published in
  ``kube-system/extension-apiserver-authentication`` (:func:`authentication_config_map`).
- **The services proxy** (``/api/v1/namespaces/NS/services/NAME:PORT/proxy/...``): plain
  HTTP to the Service, the caller's credentials not passed on.

Both relay the backend's response as it comes (status, headers, then the body as the
backend writes it), so a stream (watch, tap) reaches the client event by event; the
backend is asked to close after the response (``Connection: close``), which is how the
end of the relayed body is known.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import select
import socket
import ssl
from pathlib import Path

FRONT_PROXY_CLIENT = "front-proxy-client"  # the CN kube-apiserver's front-proxy certificate carries
USER_HEADER = "X-Remote-User"
GROUP_HEADER = "X-Remote-Group"
# Request headers never relayed: the caller's credentials stay with the API server, and
# the identity headers are the API server's to set.
_DROPPED = {"authorization", "connection", "host", "keep-alive", "transfer-encoding", "x-remote-user",
            "x-remote-group", "impersonate-user", "impersonate-group"}


@dataclasses.dataclass(frozen=True, slots=True)
class FrontProxy:
    """The request-header CA and the client certificate the aggregator presents with it."""

    ca_pem: str
    cert_file: str
    key_file: str


def make_front_proxy(directory: str) -> FrontProxy:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CLIENT)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    d = Path(directory)
    (d / "front-proxy-client.crt").write_bytes(cert.public_bytes(pem))
    (d / "front-proxy-client.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
    return FrontProxy(ca.public_bytes(pem).decode(), str(d / "front-proxy-client.crt"),
                      str(d / "front-proxy-client.key"))


def authentication_config_map(front: FrontProxy, client_ca_pem: str) -> dict:
    """``kube-system/extension-apiserver-authentication``, as kube-apiserver publishes it."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
            "data": {"client-ca-file": client_ca_pem,
                     "requestheader-client-ca-file": front.ca_pem,
                     "requestheader-allowed-names": json.dumps([FRONT_PROXY_CLIENT]),
                     "requestheader-username-headers": json.dumps([USER_HEADER]),
                     "requestheader-group-headers": json.dumps([GROUP_HEADER]),
                     "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"])}}


def backend_context(front: FrontProxy, api_service: dict) -> ssl.SSLContext:
    """TLS to an APIService's backend: its caBundle (or no check with insecureSkipTLSVerify), our client cert."""
    import base64

    spec = api_service.get("spec") or {}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if spec.get("insecureSkipTLSVerify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=base64.b64decode(spec.get("caBundle") or "").decode())
    ctx.load_cert_chain(front.cert_file, front.key_file)
    return ctx


def request_info(method: str, rest: list[str]) -> tuple[str, str, str, str, str]:
    """(verb, namespace, resource, name, subresource) of a path below /apis/GROUP/VERSION, as
    kube-apiserver's RequestInfoFactory reads it: a leading ``watch`` or ``proxy`` is the verb
    whatever the method (Linkerd's tap is ``POST .../watch/namespaces/NS/deployments/NAME/tap``)."""
    verb = ""
    if rest and rest[0] in ("watch", "proxy"):
        verb, rest = rest[0], rest[1:]
    ns = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
        if not rest:
            rest = ["namespaces", ns]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if not verb:
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())
    return verb, ns, resource, name, sub


def relay(handler, method: str, backend: tuple[str, int], path: str, *, context: ssl.SSLContext | None = None,
          server_name: str | None = None, extra_headers: dict | None = None, groups: tuple[str, ...] = ()) -> None:
    """Send the handler's request (its body included) to *backend* and relay the response as it comes.

    Raises OSError when the backend cannot be reached or answers nothing, before anything
    was written to the client (the caller turns it into a 503 Status).
    """
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    sock = socket.create_connection(backend, timeout=10)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=server_name)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {server_name or '%s:%d' % backend}", "Connection: close"]
        for key, value in handler.headers.items():
            if key.lower() not in _DROPPED and key.lower() != "content-length":
                lines.append(f"{key}: {value}")
        for key, value in (extra_headers or {}).items():
            lines.append(f"{key}: {value}")
        lines += [f"{GROUP_HEADER}: {g}" for g in groups]
        lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        sock.settimeout(None)  # a stream may be quiet for long: the backend or the client ends it
        first = sock.recv(65536)
        while first and b"\r\n\r\n" not in first and len(first) < 65536:
            more = sock.recv(65536)
            if not more:
                break
            first += more
        if b"\r\n\r\n" not in first:
            raise ConnectionResetError("the backend closed the connection without a response head")
        # From here the client's connection carries the backend's bytes, and ends when the backend's does:
        # the head says so (Connection: close), or the client would send its next request on it.
        head, rest = first.split(b"\r\n\r\n", 1)
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        handler.close_connection = True
        data = b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + rest
        client = handler.connection
        try:
            while data:
                handler.wfile.write(data)
                handler.wfile.flush()
                while True:
                    # As Go's reverse proxy cancels the backend request when the client goes away, so that a
                    # quiet stream (tap with no traffic) does not outlive its caller.
                    ready, _, _ = select.select([sock, client], [], [], 1.0)
                    if client in ready and not client.recv(1):  # EOF: the caller hung up
                        return
                    if sock in ready or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                        break
                data = sock.recv(65536)
        except OSError:
            return  # either side hung up mid-stream: the other connection closes with it
    finally:
        try:
            sock.close()
        except OSError:
            pass
