"""DNS-rebinding protection: the dashboard answers only to the Host it is served as.

A page on ``evil.example`` can make a browser resolve ``evil.example`` to
127.0.0.1 and then read our loopback dashboard from its own origin: the
same-origin policy compares names, not addresses.  Only the ``Host`` header
gives it away, so, as linkerd-web's ``-enforced-host`` flag does, every request
whose Host does not match is refused with 400 before any page or API runs
(https://linkerd.io/2/tasks/exposing-dashboard/#tweaking-host-requirement).

The policy is a regular expression over the whole Host header (name and
optional port), as Linkerd's is, so an operator who serves the dashboard under
a proxy's name can widen it with ``--enforced-host``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclasses.dataclass(frozen=True, slots=True)
class HostPolicy:
    """The Host headers a dashboard accepts: one anchored regular expression."""

    pattern: re.Pattern[str]

    @classmethod
    def from_regex(cls, regex: str) -> "HostPolicy":
        # Anchored on both ends whatever the user wrote: a partial match
        # ("localhost" inside "localhost.evil.example") would defeat the check.
        return cls(re.compile(rf"(?:{regex})\Z", re.IGNORECASE))

    @classmethod
    def for_address(cls, address: str, port: int, *, extra_names: tuple[str, ...] = ()) -> "HostPolicy":
        """Accept the address and port we serve; on loopback also its usual names (what a user types)."""
        names = [address if ":" not in address or address.startswith("[") else f"[{address}]"]
        if _is_loopback(address) or _is_wildcard(address):
            names += LOOPBACK_NAMES
        names += extra_names
        alternatives = "|".join(re.escape(n) for n in dict.fromkeys(names))
        # The port is optional only where a browser omits it (80), never for ours.
        port_part = rf"(?::{port})" + ("?" if port == 80 else "")
        return cls.from_regex(rf"(?:{alternatives}){port_part}")

    def allows(self, host: str | None) -> bool:
        return host is not None and self.pattern.match(host) is not None


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def refusal(host: str | None, policy: HostPolicy) -> str:
    """The body of the 400, worded as linkerd-web's so a user finds the explanation."""
    return (f"It appears that you are trying to reach this service with a host of {host!r}. "
            f"This does not match /{policy.pattern.pattern}/ and has been denied for security reasons "
            "(DNS rebinding). Reach the dashboard at the address it prints, or widen --enforced-host "
            "(docs/dashboard.md#security).\n")


class EnforcedHostMiddleware:
    """Plain ASGI: refuse every HTTP request whose Host the policy does not allow, before routing."""

    def __init__(self, app, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        host = hosts[0] if len(hosts) == 1 else None  # absent or repeated: refuse (RFC 9112 section 3.2)
        if self.policy.allows(host):
            return await self.app(scope, receive, send)
        body = refusal(host, self.policy).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
