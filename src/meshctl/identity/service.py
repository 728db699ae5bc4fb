"""The identity service: signs a proxy's CSR once its ServiceAccount token checks out.

Linkerd's identity controller speaks gRPC ``Certify``; we keep its message
shape and carry it as JSON over HTTP/1.1 over TLS (docs/identity.md):

    POST /v1/certify   {"identity", "token", "certificate_signing_request"}
    200                {"leaf_certificate", "intermediate_certificates", "valid_until"}
    4xx/5xx            {"error"}   (429 and 503 carry Retry-After)

The decision is sans-IO (:class:`Authority`: data in, :class:`Certified` or
:class:`Refusal` out, the clock passed in); :func:`serve` owns the sockets.
The service proves its own identity the way every meshed server does: it
serves TLS with a leaf it issues itself for
``meshctl-identity.<mesh-ns>.serviceaccount.identity.<mesh-ns>.<trust-domain>``,
which the proxy checks against ``MESHCTL_PROXY_IDENTITY_SVC_NAME``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import ssl
import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl.identity import certs
from meshctl.meshconfig import MeshConfig
from meshctl.identity.tokens import ServiceAccountRef, TokenRejected, TokenReviewer

log = logging.getLogger("meshctl.identity")

CERTIFY_PATH = "/v1/certify"
# A CSR is ~500 bytes and a projected token ~1-2 KiB; anything near this is not a proxy.
MAX_BODY = 64 * 1024
# A request head (line and headers) of a proxy's POST is ~200 bytes; h11's own default is 16 KiB.
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0
# After refusing a request whose body is still coming: how long and how much of it to read and drop.
LINGER_TIME = 2.0
LINGER_BYTES = 2 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Certified:
    leaf_pem: str
    intermediates_pem: tuple[str, ...]
    valid_until: dt.datetime
    identity: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # the HTTP status it maps to
    reason: str
    retry_after: float | None = None


class RateLimiter:
    """A token bucket per identity: *burst* issuances at once, then *per_second*.

    Every replica of a workload shares its ServiceAccount's identity, so the
    burst must cover a rollout; the limit is there so one leaked token cannot
    make the service sign without end.
    """

    def __init__(self, *, burst: float = 50, per_second: float = 5.0) -> None:
        self.burst, self.per_second = float(burst), float(per_second)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float) -> float:
        """0 when allowed (and counted), else the seconds until one more is allowed."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_second)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.per_second if self.per_second > 0 else float("inf")


SERVICE_ACCOUNT = "meshctl-identity"


def service_identity(names: MeshConfig) -> str:
    """The identity service's own name (what proxies expect in MESHCTL_PROXY_IDENTITY_SVC_NAME)."""
    return names.identity_name(SERVICE_ACCOUNT, names.mesh_namespace)


class Authority:
    """Decides on CSRs and signs the good ones.  No I/O: callers pass the reviewed token and the clock."""

    def __init__(self, issuer: certs.Issuer, *, names: MeshConfig = MeshConfig(),
                 leaf_lifetime: dt.timedelta = certs.LEAF_LIFETIME,
                 clock_skew: dt.timedelta = certs.CLOCK_SKEW_ALLOWANCE,
                 limiter: RateLimiter | None = None) -> None:
        self.issuer = issuer
        self.names = names
        self.leaf_lifetime = leaf_lifetime
        self.clock_skew = clock_skew
        self.limiter = limiter or RateLimiter()
        self._intermediates = (issuer.key_pair.cert_pem,)

    def certify(self, *, identity: str, reviewed: ServiceAccountRef | TokenRejected, csr_pem: str,
                now: dt.datetime, monotonic: float) -> Certified | Refusal:
        if now >= self.issuer.not_after:
            # Signing with an expired issuer would hand out leaves nobody accepts.
            return Refusal(503, f"issuer certificate expired at {self.issuer.not_after:%Y-%m-%dT%H:%M:%SZ}", 60.0)
        if now < self.issuer.certificate.not_valid_before_utc:
            return Refusal(503, "issuer certificate is not valid yet", 60.0)
        if isinstance(reviewed, TokenRejected):
            return Refusal(403, f"token rejected: {reviewed.reason}")
        expected = self.names.identity_name(reviewed.name, reviewed.namespace)
        csr = _parse_csr(csr_pem)
        if isinstance(csr, Refusal):
            return csr
        names = _csr_names(csr)
        if isinstance(names, Refusal):
            return names
        if names != [expected]:
            return Refusal(403, f"CSR names {names[0]!r}, but the token is for {expected!r}")
        common_names = _csr_common_names(csr)
        if common_names not in ([], [expected]):
            # Linkerd's identity service (checkCSR): the CN is empty or the identity.  Anything else
            # would be signed into a leaf whose subject names someone the SAN does not.
            return Refusal(403, f"CSR subject CN {', '.join(map(repr, common_names))} differs from the identity "
                                f"{expected!r} (it must be empty or equal it)")
        if identity != expected:
            return Refusal(403, f"requested identity {identity!r}, but the token is for {expected!r}")
        wait = self.limiter.take(expected, monotonic)
        if wait:
            return Refusal(429, f"too many certificates issued for {expected}", wait)
        leaf = certs.issue_leaf(self.issuer.key_pair, public_key=csr.public_key(), dns_name=expected,
                                lifetime=self.leaf_lifetime, now=now, backdate=self.clock_skew)
        return Certified(certs.cert_to_pem(leaf), self._intermediates, leaf.not_valid_after_utc, expected)

    def issue_own(self, key: ec.EllipticCurvePrivateKey, *, now: dt.datetime) -> x509.Certificate:
        """The service's own serving leaf (it has no token to show itself).

        Always the default 24 h, refreshed hourly (ServiceSettings): a short
        ``--leaf-lifetime`` is for workloads, and must not make the service
        itself unreachable between its refreshes.
        """
        return certs.issue_leaf(self.issuer.key_pair, public_key=key.public_key(), dns_name=service_identity(self.names),
                                lifetime=certs.LEAF_LIFETIME, now=now, backdate=certs.CLOCK_SKEW_ALLOWANCE)


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest | Refusal:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, TypeError):
        return Refusal(400, "certificate_signing_request: not a PEM CSR")
    if not csr.is_signature_valid:
        return Refusal(400, "certificate_signing_request: signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return Refusal(400, "certificate_signing_request: key must be ECDSA P-256")
    return csr


def _csr_common_names(csr: x509.CertificateSigningRequest) -> list[str]:
    return [str(attr.value) for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _csr_names(csr: x509.CertificateSigningRequest) -> list[str] | Refusal:
    """The CSR's DNS SANs, refusing any other kind of name (IP, URI, e-mail)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Refusal(403, "CSR must carry exactly one DNS name (it has no subjectAltName)")
    except (ValueError, x509.DuplicateExtension):
        return Refusal(400, "certificate_signing_request: malformed extensions")
    dns = san.get_values_for_type(x509.DNSName)
    if len(dns) != 1 or len(list(san)) != 1:
        return Refusal(403, f"CSR must carry exactly one DNS name and nothing else, it has {len(list(san))} names")
    return dns


# --- the I/O shell ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSettings:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    # Refresh the service's own serving certificate this often (it is a leaf like any other).
    own_cert_refresh: float = 3600.0


class IdentityServer:
    """Serves :data:`CERTIFY_PATH` over TLS with the service's own identity."""

    def __init__(self, authority: Authority, reviewer: TokenReviewer, settings: ServiceSettings = ServiceSettings()):
        self.authority = authority
        self.reviewer = reviewer
        self.settings = settings
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ssl.set_alpn_protocols(["http/1.1"])
        self._key = certs.new_private_key()
        self._refresh_own_cert()
        self.server: asyncio.base_events.Server | None = None
        self.issued = 0
        self.refused = 0

    def _refresh_own_cert(self) -> None:
        import os
        import tempfile

        leaf = self.authority.issue_own(self._key, now=certs.utcnow())
        chain = certs.cert_to_pem(leaf) + self.authority.issuer.key_pair.cert_pem
        # ssl loads chains from files only; the files live for the call's duration.
        with tempfile.TemporaryDirectory(prefix="meshctl-identity-") as d:
            cert_path, key_path = os.path.join(d, "crt.pem"), os.path.join(d, "key.pem")
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(certs.key_to_pem(self._key))
            with open(cert_path, "w") as f:
                f.write(chain)
            # On a live context this swaps the certificate for the next handshakes.
            self.ssl.load_cert_chain(cert_path, key_path)

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, self.settings.listen_host, self.settings.listen_port,
                                                 ssl=self.ssl, ssl_handshake_timeout=READ_TIMEOUT)
        return self.server.sockets[0].getsockname()[:2]

    async def serve_forever(self) -> None:
        assert self.server is not None
        async with self.server:
            refresher = asyncio.create_task(self._refresh_loop())
            try:
                await self.server.serve_forever()
            finally:
                refresher.cancel()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.own_cert_refresh)
            self._refresh_own_cert()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                try:
                    request, body = await asyncio.wait_for(_read_request(conn, reader), READ_TIMEOUT)
                except (_TooLarge, h11.RemoteProtocolError) as exc:
                    # A status rather than a dropped connection, so the client learns why (nginx: 413 and
                    # 400/431 likewise); then the connection is done, since the rest of the body is unread.
                    await self._refuse(conn, writer, reader, exc)
                    return
                if request is None:
                    return
                status, payload, headers = await self._respond(request, body)
                await _send_json(conn, writer, status, payload, headers)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, h11.RemoteProtocolError, h11.LocalProtocolError):
            return
        finally:
            writer.close()

    async def _refuse(self, conn, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, exc: Exception) -> None:
        import h11

        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        self.refused += 1
        if isinstance(exc, _TooLarge):
            status, reason = 413, str(exc)
        else:
            status, reason = exc.error_status_hint, f"malformed HTTP request: {exc}"
        log.info("refused a request: %s", reason)
        await _send_json(conn, writer, status, {"error": reason}, [("connection", "close")])
        await _linger(reader)
    async def _respond(self, request, body: bytes) -> tuple[int, dict, list]:
        method, target = request.method.decode(), request.target.decode()
        if target in ("/ready", "/live") and method == "GET":
            return 200, {"status": "ok"}, []
        if target != CERTIFY_PATH:
            return 404, {"error": f"no such path {target}"}, []
        if method != "POST":
            return 405, {"error": "use POST"}, [("allow", "POST")]
        try:
            req = json.loads(body)
            identity, token, csr = req["identity"], req["token"], req["certificate_signing_request"]
            if not all(isinstance(v, str) for v in (identity, token, csr)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "body must be JSON with string fields identity, token, certificate_signing_request"}, []
        # The reviewer may block on the Kubernetes API: keep it off the loop.
        reviewed = await asyncio.to_thread(self.reviewer.review, token)
        result = self.authority.certify(identity=identity, reviewed=reviewed, csr_pem=csr, now=certs.utcnow(),
                                        monotonic=time.monotonic())
        if isinstance(result, Refusal):
            self.refused += 1
            log.info("refused %s: %s", identity, result.reason)
            headers = [("retry-after", str(max(1, round(result.retry_after))))] if result.retry_after else []
            return result.status, {"error": result.reason}, headers
        self.issued += 1
        log.info("issued %s valid until %s", result.identity, result.valid_until.isoformat())
        return 200, {"leaf_certificate": result.leaf_pem, "intermediate_certificates": list(result.intermediates_pem),
                     "valid_until": result.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")}, []


class _TooLarge(Exception):
    """The request body is over MAX_BODY; the message says how large and the limit."""


async def _send_json(conn, writer: asyncio.StreamWriter, status: int, payload: dict, headers: list) -> None:
    import h11

    data = json.dumps(payload).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(data))), *headers]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=data)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _linger(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends, for a bounded time, before closing.

    Closing a socket with unread data makes the kernel answer with a reset,
    which can destroy the response the client has not read yet (nginx's
    ``lingering_close`` exists for this).  Bounded in bytes and time.
    """
    loop = asyncio.get_running_loop()
    deadline, left = loop.time() + LINGER_TIME, LINGER_BYTES
    try:
        while left > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            data = await asyncio.wait_for(reader.read(65536), remaining)
            if not data:
                return
            left -= len(data)
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
        return


def _declared_length(request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is one decimal number
    return None


async def _read_request(conn, reader: asyncio.StreamReader):
    """One request and its body, or (None, b"") when the client is done.

    _TooLarge as soon as the body is known to exceed MAX_BODY: at the head
    when it declares a Content-Length, else when the chunks pass the limit.
    """
    import h11

    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
            length = _declared_length(event)
            if length is not None and length > MAX_BODY:
                raise _TooLarge(f"request body of {length} bytes is over the limit of {MAX_BODY} bytes")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _TooLarge(f"request body is over the limit of {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b""
