"""mTLS between proxies: contexts, ClientHello detection, peer identity checks.

Three rules, all from Linkerd's design:

- TLS 1.3 only, ECDSA P-256 certificates chained to the mesh's trust anchors.
- The *name* is the identity: a leaf carries exactly one DNS SAN,
  ``<sa>.<ns>.serviceaccount.identity.<mesh-ns>.<trust-domain>``.  Python's
  ``check_hostname`` matches hostnames (wildcards, IP rules, CN fallback in
  old versions), which is not what we mean, so it is off: ``ssl`` verifies
  the chain, then :func:`verify_peer_identity` compares the SAN exactly.
- The mesh marker is SNI: a meshed client puts the *server's identity* in
  the ClientHello's server_name, as linkerd2-proxy does.  The inbound side
  terminates TLS only when the SNI is its own identity; any other TLS (the
  application's own) is passed through untouched.

:func:`parse_client_hello` is sans-IO: bytes in, a verdict out.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tempfile
from typing import cast

# Inner protocols offered inside mesh TLS.  The inbound side still runs
# protocol detection on the decrypted bytes; ALPN only tells it early.
MESH_ALPN = ("h2", "http/1.1")


class IdentityMismatch(ConnectionError):
    """The peer's certificate chains to our anchors but names someone else."""


# --- contexts --------------------------------------------------------------------

def _base_context(server_side: bool, *, trust_anchors_pem: str, cert_file: str | None, key_file: str | None,
                  alpn: tuple[str, ...] | None = MESH_ALPN) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # we check the identity SAN ourselves, exactly (module docstring)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mesh TLS is mutual: the server asks every client for its certificate
    ctx.load_verify_locations(cadata=trust_anchors_pem)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(*, trust_anchors_pem: str, cert_file: str | None = None, key_file: str | None = None,
                   alpn: tuple[str, ...] | None = MESH_ALPN) -> ssl.SSLContext:
    """For originating mesh TLS (with our certificate) or talking to the identity service (without one yet)."""
    return _base_context(False, trust_anchors_pem=trust_anchors_pem, cert_file=cert_file, key_file=key_file, alpn=alpn)


def server_context(*, trust_anchors_pem: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """For terminating mesh TLS: presents our certificate, requires and verifies the client's."""
    ctx = _base_context(True, trust_anchors_pem=trust_anchors_pem, cert_file=cert_file, key_file=key_file)
    # No TLS 1.3 session tickets (RFC 8446 section 4.6.1): OpenSSL sends two after every handshake,
    # each sealed by us and parsed by the peer, yet a proxy never resumes (its pooled connections
    # are long-lived, and it passes no session to wrap_bio), so they are pure cost.
    ctx.num_tickets = 0
    return ctx


# The ALPN lists the proxy's connection pools ask for; one client context each,
# built at every rotation (a context costs well under a millisecond).
CLIENT_ALPNS: tuple[tuple[str, ...] | None, ...] = (None, ("http/1.1",), ("h2",), MESH_ALPN)


@dataclasses.dataclass(frozen=True, slots=True)
class MeshContexts:
    """Every SSL context one certificate needs: a server context and a client context per ALPN list."""

    server: ssl.SSLContext
    clients: dict

    def client(self, alpn=None) -> ssl.SSLContext:
        key = tuple(alpn) if alpn else None
        return self.clients.get(key) or self.clients[MESH_ALPN]


def contexts_from_pem(*, trust_anchors_pem: str, chain_pem: str, key_pem: str,
                      directory: str | None = None) -> MeshContexts:
    """The contexts for a certificate chain and key held as PEM.

    ``ssl`` loads certificates from files only.  The key is written to
    *directory* (the proxy's in-memory identity volume) readable by us alone,
    and removed again once loaded.
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix=".load-") as d:
        cert_file, key_file = os.path.join(d, "crt.pem"), os.path.join(d, "key.pem")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key_pem)
        with open(cert_file, "w") as f:
            f.write(chain_pem)
        clients = {alpn: client_context(trust_anchors_pem=trust_anchors_pem, cert_file=cert_file, key_file=key_file,
                                        alpn=alpn) for alpn in CLIENT_ALPNS}
        server = server_context(trust_anchors_pem=trust_anchors_pem, cert_file=cert_file, key_file=key_file)
    return MeshContexts(server, clients)


# --- identities -------------------------------------------------------------------

# RFC 1035 section 2.3.4 limits, as webpki's reference-identifier check applies them.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def parse_identity_name(name: str) -> str | None:
    """*name* when it can be an identity, else None: Linkerd's ``identity::Name::from_str``.

    Linkerd parses a peer's SAN as a DNS *reference* identifier (webpki's
    ``DnsNameRef::try_from_ascii``) and refuses a trailing dot ("SNI hostnames
    are implicitly absolute").  So a wildcard (``*.shop...``: a pattern, not a
    name), an absolute name (``web.shop....local.``), an empty label, a label
    or name over the RFC 1035 lengths, a character outside letters, digits,
    ``-`` and ``_``, a label starting or ending with ``-``, or an all-numeric
    last label (an IPv4 address in disguise) names no one.  A certificate
    carrying such a SAN authenticates its chain but gives no identity.
    """
    if not name or len(name) > MAX_NAME_LENGTH or not name.isascii():
        return None
    labels = name.split(".")
    for label in labels:
        if (not label or len(label) > MAX_LABEL_LENGTH or not _LABEL_CHARS.issuperset(label)
                or label[0] == "-" or label[-1] == "-"):
            return None
    if labels[-1].isdigit():
        return None
    return name


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The verified peer's identity: its one DNS SAN when that is a name (:func:`parse_identity_name`), else None.

    None too when the certificate has no DNS SAN or several.  Only meaningful
    with CERT_REQUIRED, where ``getpeercert()`` returns the certificate after
    the chain was verified.
    """
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    sans = cast("tuple[tuple[str, str], ...]", cert.get("subjectAltName", ()))
    dns = [value for kind, value in sans if kind == "DNS"]
    return parse_identity_name(dns[0]) if len(dns) == 1 else None


def verify_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: str) -> str:
    """Raise IdentityMismatch unless the peer is exactly *expected*; returns it."""
    got = peer_identity(ssl_object)
    if got != expected:
        raise IdentityMismatch(f"peer identity is {got!r}, expected {expected!r}")
    return got


# --- ClientHello detection (sans-IO) ----------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class NotTls:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class NeedMore:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    alpn: tuple[str, ...]


# A ClientHello fits one record in practice (RFC 8446 allows more, no client
# we talk to does it); beyond one maximal record we give up and call it opaque.
MAX_HELLO = 5 + 16384


def parse_client_hello(data: bytes) -> ClientHello | NeedMore | NotTls:
    """Inspect the first bytes of a connection (RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301 §3.1)."""
    if len(data) < 1:
        return NeedMore()
    if data[0] != 0x16:  # handshake record
        return NotTls()
    if len(data) < 5:
        return NeedMore() if data[1:2] in (b"", b"\x03") else NotTls()
    if data[1] != 0x03:
        return NotTls()
    record_len = int.from_bytes(data[3:5], "big")
    if record_len > 16384:
        return NotTls()
    if len(data) < 5 + record_len:
        return NeedMore()
    body = data[5:5 + record_len]
    try:
        return _parse_hello_body(body)
    except (IndexError, ValueError):
        return NotTls()


def _parse_hello_body(b: bytes) -> ClientHello | NotTls:
    if b[0] != 0x01:  # client_hello
        return NotTls()
    end = min(len(b), 4 + int.from_bytes(b[1:4], "big"))
    i = 4 + 2 + 32  # legacy_version, random
    i += 1 + b[i]  # legacy_session_id
    i += 2 + int.from_bytes(b[i:i + 2], "big")  # cipher_suites
    i += 1 + b[i]  # legacy_compression_methods
    if i + 2 > end:
        return ClientHello(None, ())
    ext_end = min(end, i + 2 + int.from_bytes(b[i:i + 2], "big"))
    i += 2
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    while i + 4 <= ext_end:
        ext_type, ext_len = int.from_bytes(b[i:i + 2], "big"), int.from_bytes(b[i + 2:i + 4], "big")
        ext = b[i + 4:i + 4 + ext_len]
        i += 4 + ext_len
        if ext_type == 0:  # server_name: list of (type, name); type 0 is host_name
            j = 2
            while j + 3 <= len(ext):
                name_type, name_len = ext[j], int.from_bytes(ext[j + 1:j + 3], "big")
                if name_type == 0:
                    server_name = ext[j + 3:j + 3 + name_len].decode("ascii")
                    break
                j += 3 + name_len
        elif ext_type == 16:  # application_layer_protocol_negotiation
            j, protos = 2, []
            while j < len(ext):
                n = ext[j]
                protos.append(ext[j + 1:j + 1 + n].decode("ascii", "replace"))
                j += 1 + n
            alpn = tuple(protos)
    return ClientHello(server_name, alpn)
