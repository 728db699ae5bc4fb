"""The proxy's own identity: key, CSR, certificate, renewal.

As linkerd2-proxy does: the key is made here at start and never leaves the
pod (only the CSR is sent); the proxy is not ready until the identity service
has signed; it renews when 70% of the time the certificate had left on arrival
has passed (linkerd2-proxy's ``refresh_in``: 70% of ``expiry - now``), retrying with
backoff but never more often than ``MESHCTL_PROXY_IDENTITY_MIN_REFRESH``; while
the identity service is unreachable it keeps serving on the certificate it
has, and when that expires it fails closed (:meth:`IdentityManager.current`
returns None, so no mesh TLS is originated or accepted).

:func:`next_refresh` is the schedule, pure; :class:`IdentityManager` runs it.
The wire protocol (JSON over HTTP/1.1 over TLS) is in docs/identity.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import ssl
import time
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl_proxy.identity import tls_contexts
log = logging.getLogger("meshctl_proxy.identity.certificates")

CERTIFY_PATH = "/v1/certify"
RENEW_AT = 0.7  # of the time left when a certificate arrives, as Linkerd renews
# Before the first certificate the proxy is not ready: retry fast, doubling up to min_refresh.
INITIAL_BACKOFF = 0.1
REQUEST_TIMEOUT = 10.0
MAX_RESPONSE = 256 * 1024


class CertifyError(Exception):
    """The identity service did not sign; *retry_after* when it said when to come back."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """One issued certificate and the TLS contexts built from it."""

    name: str
    chain_pem: str
    not_before: float  # epoch seconds
    not_after: float
    contexts: tls_contexts.MeshContexts
    received: float = 0.0  # epoch seconds when it arrived (the renewal schedule counts from there)

    @property
    def server_context(self) -> ssl.SSLContext:
        return self.contexts.server

    def client_context(self, alpn=None) -> ssl.SSLContext:
        return self.contexts.client(alpn)

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def next_refresh(*, now: float, not_before: float | None, not_after: float | None, failures: int,
                 min_refresh: float, retry_after: float | None = None, received: float | None = None,
                 jitter: Callable[[], float] = random.random) -> float:
    """Seconds until the next CSR.  Pure: the whole renewal policy in one place.

    - no certificate yet: 0.1 s doubling per failure, capped at *min_refresh*
      (the proxy is not ready, so starting fast matters);
    - holding one: after a success, once 70% of the time it had left when it
      arrived (*received*, by default *now*) has passed, as Linkerd renews.  Not
      70% of its whole lifetime: a leaf backdated for clock skew (the identity
      service's ``--clock-skew-allowance``, 20 s) and short-lived would reach that
      point at once, and renew at every *min_refresh* (issue 13, class 10);
    - after a failure
      *min_refresh* doubling per failure (with up to 10% jitter so a fleet
      does not retry in step), but never past what is left of the lifetime
      and never below *min_refresh*;
    - the service's Retry-After is honoured when it is later.
    """
    if not_after is None or not_before is None:
        delay = min(min_refresh, INITIAL_BACKOFF * 2 ** failures) if failures else 0.0
    elif failures == 0:
        start = now if received is None else received
        delay = max(min_refresh, start + RENEW_AT * (not_after - start) - now)
    else:
        backoff = min_refresh * 2 ** (failures - 1) * (1 + 0.1 * jitter())
        delay = max(min_refresh, min(backoff, not_after - now))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclasses.dataclass(frozen=True, slots=True)
class IdentitySettings:
    """What the manager needs from the proxy's configuration (MESHCTL_PROXY_IDENTITY_*)."""

    local_name: str
    trust_anchors_pem: str
    svc_host: str
    svc_port: int
    svc_name: str
    token_file: str
    directory: str
    min_refresh: float = 10.0

    @classmethod
    def from_config(cls, cfg) -> "IdentitySettings":
        host, port = cfg.identity_svc_addr
        return cls(local_name=cfg.identity_local_name, trust_anchors_pem=cfg.identity_trust_anchors,
                   svc_host=host, svc_port=port, svc_name=cfg.identity_svc_name, token_file=cfg.identity_token_file,
                   directory=cfg.identity_dir, min_refresh=cfg.identity_min_refresh)


class IdentityManager:
    """Holds the proxy's key and current certificate; :meth:`run` keeps it fresh."""

    def __init__(self, settings: IdentitySettings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.local_name:
            raise ValueError("MESHCTL_PROXY_IDENTITY_LOCAL_NAME: required when identity is enabled")
        if tls_contexts.parse_identity_name(settings.local_name) is None:
            # Peers would take a certificate for it as no identity at all (tls_contexts.parse_identity_name).
            raise ValueError(f"MESHCTL_PROXY_IDENTITY_LOCAL_NAME: {settings.local_name!r} is not an identity name "
                             "(no wildcard, no trailing dot, DNS labels only)")
        if "-----BEGIN CERTIFICATE-----" not in settings.trust_anchors_pem:
            raise ValueError("MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS: no PEM certificate")
        self.settings = settings
        self._clock = clock
        os.makedirs(settings.directory, mode=0o700, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode()
        self.csr_pem = _make_csr(self._key, settings.local_name)
        self._svc_context = tls_contexts.client_context(trust_anchors_pem=settings.trust_anchors_pem)
        self._creds: Credentials | None = None
        self._ready = asyncio.Event()
        # Observability (Linkerd: identity_cert_refresh_count, identity_cert_expiration_timestamp_seconds).
        self.refreshes = 0
        self.failures_total = 0
        self.last_error: str | None = None
        # Mesh connections made or accepted with our certificate: aborted if it
        # expires without a successor (fail closed also for pooled connections).
        self._watched: set = set()
        self._expiry_timer: asyncio.TimerHandle | None = None

    # --- what the proxy asks ---------------------------------------------------
    @property
    def name(self) -> str:
        return self.settings.local_name

    def current(self) -> Credentials | None:
        """The certificate to use now, or None: not issued yet, or expired (fail closed)."""
        creds = self._creds
        if creds is None or not creds.valid_at(self._clock()):
            return None
        return creds

    def is_ready(self) -> bool:
        """The /ready hook: true only while holding a valid certificate."""
        return self.current() is not None

    @property
    def expiry(self) -> float | None:
        return self._creds.not_after if self._creds else None

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def watch(self, transport) -> None:
        """Register a mesh TLS connection to be aborted if our certificate lapses."""
        if len(self._watched) >= 64:
            self._watched = {t for t in self._watched if not t.is_closing()}
        self._watched.add(transport)

    def _on_expiry(self, creds: Credentials) -> None:
        if self._creds is not creds:
            return  # renewed in time: connections made with the old certificate stay
        log.error("identity: certificate for %s EXPIRED; failing closed (%d mesh connections dropped)",
                  self.name, sum(not t.is_closing() for t in self._watched))
        self._ready.clear()
        watched, self._watched = self._watched, set()
        for transport in watched:
            transport.abort()

    # --- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Obtain and keep renewing the certificate until cancelled."""
        failures, retry_after = 0, None
        while True:
            creds = self._creds
            delay = next_refresh(now=self._clock(), not_before=creds.not_before if creds else None,
                                 not_after=creds.not_after if creds else None, failures=failures,
                                 min_refresh=self.settings.min_refresh, retry_after=retry_after,
                                 received=creds.received if creds else None)
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except (CertifyError, OSError, ssl.SSLError, asyncio.TimeoutError, ValueError) as exc:
                failures += 1
                self.failures_total += 1
                retry_after = exc.retry_after if isinstance(exc, CertifyError) else None
                self.last_error = str(exc) or type(exc).__name__
                left = (self._creds.not_after - self._clock()) if self._creds else None
                log.warning("identity: certify failed (%s); %s", self.last_error,
                            "no certificate yet" if left is None else
                            f"current certificate expires in {left:.0f}s" if left > 0 else "certificate EXPIRED")
            else:
                failures, retry_after = 0, None

    async def refresh(self) -> Credentials:
        """One CSR round trip; installs and returns the new credentials."""
        leaf_pem, intermediates = await asyncio.wait_for(self._certify(), REQUEST_TIMEOUT)
        leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
        dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        if dns != [self.name]:
            raise CertifyError(f"identity service returned a certificate for {dns}, expected {self.name!r}")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(*spki) != self._key.public_key().public_bytes(*spki):
            raise CertifyError("identity service returned a certificate for another key")
        chain_pem = leaf_pem + "".join(intermediates)
        contexts = tls_contexts.contexts_from_pem(trust_anchors_pem=self.settings.trust_anchors_pem, chain_pem=chain_pem,
                                         key_pem=self._key_pem, directory=self.settings.directory)
        creds = Credentials(self.name, chain_pem, leaf.not_valid_before_utc.timestamp(),
                            leaf.not_valid_after_utc.timestamp(), contexts, received=self._clock())
        self._creds = creds
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(max(0.0, creds.not_after - self._clock()), self._on_expiry, creds)
        self._write_chain(chain_pem)
        self.refreshes += 1
        self._ready.set()
        log.info("identity: certified %s until %s", self.name,
                 dt.datetime.fromtimestamp(creds.not_after, dt.timezone.utc).isoformat())
        return creds

    def _write_chain(self, chain_pem: str) -> None:
        # The certificate (public) is kept in the identity directory for
        # `meshctl identity show` and debugging; the key stays in memory.
        path = os.path.join(self.settings.directory, "certificate.crt")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(chain_pem)
        os.replace(tmp, path)

    async def _certify(self) -> tuple[str, list[str]]:
        try:
            with open(self.settings.token_file, encoding="utf-8") as f:
                token = f.read().strip()  # projected tokens rotate: read it every time
        except OSError as exc:
            raise CertifyError(f"reading token {self.settings.token_file}: {exc.strerror or exc}") from None
        body = json.dumps({"identity": self.name, "token": token, "certificate_signing_request": self.csr_pem}).encode()
        status, headers, payload = await post_json(self.settings.svc_host, self.settings.svc_port, CERTIFY_PATH, body,
                                                   ssl_context=self._svc_context, server_identity=self.settings.svc_name)
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = {}
        if status != 200:
            retry = headers.get("retry-after")
            raise CertifyError(f"identity service answered {status}: {doc.get('error', payload[:200])!r}",
                               retry_after=float(retry) if retry and retry.isdigit() else None)
        leaf, inter = doc.get("leaf_certificate"), doc.get("intermediate_certificates", [])
        if not isinstance(leaf, str) or not isinstance(inter, list):
            raise CertifyError("identity service answered without leaf_certificate")
        return leaf, [str(c) for c in inter]


def _make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           # CN is limited to 64 characters (RFC 5280); the SAN is what counts.
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if len(name) <= 64 else []))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def post_json(host: str, port: int, path: str, body: bytes, *, ssl_context: ssl.SSLContext,
                    server_identity: str) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 POST over TLS to a server that must prove *server_identity*.

    The proxy keeps to the standard library here; the identity service always
    answers with Content-Length, and we close after one exchange.
    """
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=server_identity)
    try:
        tls_contexts.verify_peer_identity(writer.get_extra_info("ssl_object"), server_identity)
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {server_identity}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise CertifyError(f"identity service sent a bad status line {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_RESPONSE:
            raise CertifyError(f"identity service response too large ({length} bytes)")
        payload = await reader.readexactly(length)
        return int(parts[1]), headers, payload
    except asyncio.IncompleteReadError:
        raise CertifyError("identity service closed the connection mid-response") from None
    finally:
        writer.close()
