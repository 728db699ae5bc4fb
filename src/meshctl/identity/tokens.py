"""Who is asking for a certificate: the one token-review interface.

The identity service proves a CSR's identity by reviewing the pod's projected
ServiceAccount token (audience ``identity.meshctl.io``), as Linkerd's identity
controller does with the Kubernetes TokenReview API.  It knows the reviewer
only through :class:`TokenReviewer`:

- in a cluster, the control plane's implementation over TokenReview
  (``meshctl.k8s``; it must check ``status.authenticated`` and that the
  reviewed audiences include ours, and map ``system:serviceaccount:NS:SA``);
- for the demo and tests, :class:`LocalTokenRegistry`, a file of tokens.

``review`` is synchronous (the Kubernetes client is); the service calls it
off the event loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from typing import Callable, Protocol

from meshctl.errors import InputError
from meshctl_proxy.config import IDENTITY_AUDIENCE

# Kubernetes object names (RFC 1123 labels for namespaces, subdomains for SAs).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccountRef:
    """An authenticated ServiceAccount."""

    namespace: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRejected:
    """The token proves nothing; *reason* is safe to tell the caller."""

    reason: str


class TokenReviewer(Protocol):
    def review(self, token: str) -> ServiceAccountRef | TokenRejected:
        """Who *token* belongs to, if it is valid now and meant for the identity service's audience."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class RegisteredToken:
    namespace: str
    service_account: str
    audience: str
    expires: dt.datetime


def _digest(token: str) -> bytes:
    # Keyed by digest and compared with compare_digest: a lookup must not leak
    # through timing how much of a token was right.
    return hashlib.sha256(token.encode()).digest()


def _parse_time(raw, *, where: str) -> dt.datetime:
    if isinstance(raw, dt.datetime):
        value = raw
    else:
        try:
            value = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{where}: expires: expected an RFC 3339 time, got {raw!r}") from None
    if value.tzinfo is None:
        raise InputError(f"{where}: expires: needs a time zone (e.g. a trailing Z)")
    return value


def parse_registry(text: str, *, source: str) -> dict[bytes, RegisteredToken]:
    """The registry file: ``{"tokens": [{"token", "namespace", "serviceAccount", "audience", "expires"}]}`` (JSON or YAML)."""
    import yaml

    try:
        doc = yaml.safe_load(text) if text.strip() else {"tokens": []}
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise InputError(f"{source}: expected a mapping with a 'tokens' list")
    out: dict[bytes, RegisteredToken] = {}
    for i, entry in enumerate(doc["tokens"], 1):
        where = f"{source}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a mapping")
        for key in ("token", "namespace", "serviceAccount", "expires"):
            if not entry.get(key):
                raise InputError(f"{where}: {key}: required")
        if not _DNS_LABEL.fullmatch(str(entry["namespace"])):
            raise InputError(f"{where}: namespace: not a valid namespace name: {entry['namespace']!r}")
        if not _DNS_SUBDOMAIN.fullmatch(str(entry["serviceAccount"])):
            raise InputError(f"{where}: serviceAccount: not a valid name: {entry['serviceAccount']!r}")
        out[_digest(str(entry["token"]))] = RegisteredToken(
            namespace=str(entry["namespace"]), service_account=str(entry["serviceAccount"]),
            audience=str(entry.get("audience") or IDENTITY_AUDIENCE),
            expires=_parse_time(entry["expires"], where=where),
        )
    return out


class LocalTokenRegistry:
    """Tokens from a file, re-read when it changes (the demo adds pods while the service runs)."""

    def __init__(self, path: str, *, audience: str = IDENTITY_AUDIENCE,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self.path = path
        self.audience = audience
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[bytes, RegisteredToken] = {}
        self._reload()  # a bad file fails at start, not at the first CSR

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InputError(f"{self.path}: {exc.strerror or exc}") from None
        self._tokens, self._stamp = parse_registry(text, source=self.path), stamp

    def review(self, token: str) -> ServiceAccountRef | TokenRejected:
        with self._lock:
            try:
                self._reload()
            except InputError:
                pass  # keep serving the last good registry while the file is being rewritten
            digest = _digest(token)
            entry = next((v for k, v in self._tokens.items() if hmac.compare_digest(k, digest)), None)
        if entry is None:
            return TokenRejected("token not recognised")
        if entry.audience != self.audience:
            return TokenRejected(f"token audience {entry.audience!r} is not {self.audience!r}")
        if self._clock() >= entry.expires:
            return TokenRejected("token expired")
        return ServiceAccountRef(entry.namespace, entry.service_account)


def add_token(path: str, *, namespace: str, service_account: str, ttl: dt.timedelta = dt.timedelta(hours=24),
              audience: str = IDENTITY_AUDIENCE, now: dt.datetime | None = None) -> str:
    """Mint a random token into the registry file (created if missing) and return it.

    The file is replaced atomically so a running service never reads half of it.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    entries = []
    if os.path.exists(path):
        import yaml

        with open(path, encoding="utf-8") as f:
            parse_registry(f.read(), source=path)  # refuse to extend a broken file
            f.seek(0)
            entries = (yaml.safe_load(f) or {}).get("tokens", [])
    token = secrets.token_urlsafe(32)
    entries.append({"token": token, "namespace": namespace, "serviceAccount": service_account, "audience": audience,
                    "expires": (now + ttl).strftime("%Y-%m-%dT%H:%M:%SZ")})
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"tokens": [{k: (str(v) if isinstance(v, dt.datetime) else v) for k, v in e.items()}
                              for e in entries]}, f, indent=2)
    os.replace(tmp, path)
    return token
