"""Class 9: the identity service's CSR checks and its answer to oversized requests (docs/security.md).

- A CSR whose subject CN differs from its SAN was signed.  Like Linkerd's
  identity service (``checkCSR``), the CN must be empty or equal the identity.
- A 1 MB request got a dropped connection.  It is answered 413 with a JSON
  error as soon as the length is known (at the head when it declares a
  Content-Length, else when the chunks pass the limit), and the rest of the
  body is read and dropped for a bounded time so the answer is not lost to a
  reset.  A head over the limit gets 431 the same way.

The requests go over real TLS to the real service, from raw sockets.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl.identity import certs, service
from meshctl.identity.tokens import ServiceAccountRef

WEB = "web.shop.serviceaccount.identity.meshctl.cluster.local"


@pytest.fixture(scope="module")
def authority():
    made = certs.utcnow() - dt.timedelta(hours=1)
    anchor = certs.generate_trust_anchor(now=made)
    issuer = certs.generate_issuer(anchor, now=made)
    loaded = certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=issuer.key_pem, trust_anchors_pem=anchor.cert_pem)
    return service.Authority(loaded)


def make_csr(*, san: str = WEB, common_names=(), extra_subject=()) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names] + list(extra_subject))
    b = (x509.CertificateSigningRequestBuilder().subject_name(subject)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False))
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def certify(authority, csr_pem: str):
    return authority.certify(identity=WEB, reviewed=ServiceAccountRef("shop", "web"), csr_pem=csr_pem,
                             now=certs.utcnow(), monotonic=time.monotonic())


@pytest.mark.parametrize("common_names", [(), (WEB,)])
def test_a_cn_that_is_empty_or_the_identity_is_signed(authority, common_names):
    result = certify(authority, make_csr(common_names=common_names))
    assert isinstance(result, service.Certified), result
    leaf = x509.load_pem_x509_certificate(result.leaf_pem.encode())
    # the leaf's subject is the service's choice, never the CSR's
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == WEB


@pytest.mark.parametrize("common_names", [
    ("db.shop.serviceaccount.identity.meshctl.cluster.local",),  # another workload's identity
    ("admin",),
    (WEB.upper(),),  # names compare exactly, as Linkerd's do
    (WEB + ".",),
    (WEB, "db.shop.serviceaccount.identity.meshctl.cluster.local"),  # two CNs, one of them right
    ("db.shop.serviceaccount.identity.meshctl.cluster.local", WEB),
])
def test_a_cn_that_differs_from_the_identity_is_refused(authority, common_names):
    result = certify(authority, make_csr(common_names=common_names))
    assert isinstance(result, service.Refusal)
    assert result.status == 403 and "CN" in result.reason and "must be empty or equal" in result.reason


def test_other_subject_attributes_do_not_matter_but_the_san_still_does(authority):
    org = (x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop"),)
    assert isinstance(certify(authority, make_csr(common_names=(WEB,), extra_subject=org)), service.Certified)
    other = certify(authority, make_csr(san="db.shop.serviceaccount.identity.meshctl.cluster.local",
                                        common_names=(WEB,)))
    assert isinstance(other, service.Refusal) and other.status == 403


# --- over the wire: oversized requests --------------------------------------------------------

@pytest.fixture
def service_tls(mesh):
    """Connect to the mesh's identity service over TLS, checking it is who it says."""
    from meshctl_proxy.identity import tls_contexts as tls

    ctx = tls.client_context(trust_anchors_pem=mesh.anchor.cert_pem, alpn=("http/1.1",))

    def connect() -> ssl.SSLSocket:
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", mesh.port), timeout=5),
                               server_hostname=mesh.svc_name)
        tls.verify_peer_identity(sock, mesh.svc_name)
        return sock

    return connect


def read_response(sock: ssl.SSLSocket, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    import h11

    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    sock.settimeout(timeout)
    status, headers, body = None, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body


def test_a_declared_oversized_body_is_answered_413_before_it_is_sent(service_tls):
    with service_tls() as sock:
        sock.sendall(b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1048576\r\n\r\n")
        started = time.monotonic()
        status, headers, body = read_response(sock)
        assert time.monotonic() - started < 1.0  # at once: the service did not wait for the body
    assert status == 413 and headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert "1048576 bytes" in json.loads(body)["error"] and "65536" in json.loads(body)["error"]


def test_a_whole_1mb_request_gets_its_413_not_a_reset(service_tls):
    payload = json.dumps({"identity": WEB, "token": "x" * (1 << 20), "certificate_signing_request": ""}).encode()
    with service_tls() as sock:
        sock.sendall(b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        status, _, body = read_response(sock)
    assert status == 413 and "over the limit" in json.loads(body)["error"]


def test_a_chunked_body_is_answered_413_once_past_the_limit(service_tls):
    chunk = b"x" * 16384
    with service_tls() as sock:
        sock.sendall(b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):  # 80 KiB, never ended
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = read_response(sock)
    assert status == 413 and "65536" in json.loads(body)["error"]


def test_a_head_over_the_limit_is_answered_431(service_tls):
    with service_tls() as sock:
        # a head still incomplete past 16 KiB (h11 limits what it must buffer, not a complete head read at once)
        sock.sendall(b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nX-Filler: " + b"a" * 20000)
        status, headers, body = read_response(sock)
    assert status == 431 and headers["content-type"] == "application/json" and json.loads(body)["error"]


def test_a_body_just_under_the_limit_is_still_read(service_tls):
    payload = json.dumps({"identity": WEB, "token": "t" * 60000, "certificate_signing_request": "x"}).encode()
    assert len(payload) < service.MAX_BODY
    with service_tls() as sock:
        sock.sendall(b"POST /v1/certify HTTP/1.1\r\nHost: identity\r\nContent-Length: %d\r\n\r\n" % len(payload)
                     + payload)
        status, _, body = read_response(sock)
    assert status == 403 and "token rejected" in json.loads(body)["error"]  # reviewed, not refused for size
