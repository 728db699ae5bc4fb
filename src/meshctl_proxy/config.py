"""The proxy's configuration, defined once.

Both sides of the mesh read this module: ``meshctl inject --manual`` renders
the ``MESHCTL_PROXY_*`` environment from :data:`SETTINGS`, and the proxy
parses its environment with :func:`load`.  Names follow linkerd2-proxy's
(``LINKERD2_PROXY_INBOUND_LISTEN_ADDR`` becomes
``MESHCTL_PROXY_INBOUND_LISTEN_ADDR``) so that operators who know Linkerd find
their way.

This module is imported by the CLI as well as the proxy, so it must stay
cheap: standard library only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

PREFIX = "MESHCTL_PROXY_"

# Well-known ports, as Linkerd numbers them (4140 outbound, 4143 inbound,
# 4190 tap/control, 4191 admin).  The init step never redirects 4190/4191.
OUTBOUND_PORT = 4140
INBOUND_PORT = 4143
CONTROL_PORT = 4190
ADMIN_PORT = 4191
PROXY_UID = 2102
IDENTITY_AUDIENCE = "identity.meshctl.io"
# The viz extension's tap service account (Linkerd: tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local).
VIZ_NAMESPACE = "meshctl-viz"
TAP_SVC_NAME = f"tap.{VIZ_NAMESPACE}.serviceaccount.identity.meshctl.cluster.local"
IDENTITY_DIR = "/var/run/meshctl/identity/end-entity"
IDENTITY_TOKEN_FILE = "/var/run/secrets/tokens/meshctl-identity-token"
INBOUND_POLICIES = ("all-unauthenticated", "all-authenticated", "cluster-authenticated", "deny")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
BALANCERS = ("peak-ewma", "round-robin")


class ConfigError(ValueError):
    """A configuration value the proxy cannot start with; names the variable."""


# --- parsers -----------------------------------------------------------------
# Each takes the raw string and returns the typed value or raises ValueError
# with a short reason; load() adds the variable name.

def parse_str(raw: str) -> str:
    return raw


def parse_addr(raw: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the port must be 0..65535."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]+):(\d+)", raw.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return host, port


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(raw: str) -> float:
    """Go-style durations as Linkerd writes them (``100ms``, ``10s``, ``1m30s``), in seconds."""
    text = raw.strip()
    pos, total = 0, 0.0
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * scale[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 100ms, 10s or 1m30s, got {raw!r}")
    return total


def parse_ports(raw: str) -> frozenset[int]:
    """Comma-separated ports and ranges (``80,8080-8090``), as Linkerd's skip-ports take them."""
    ports: set[int] = set()
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad port or range {part!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if not (0 < first <= last <= 65535):
            raise ValueError(f"port range {part!r} out of 1..65535")
        if last - first > 65535:
            raise ValueError(f"port range {part!r} too wide")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def parse_networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"bad network {part!r}") from None
    return tuple(nets)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def parse_log_level(raw: str) -> str:
    # Linkerd accepts filter directives such as "warn,linkerd=info"; the first
    # bare level is the one that counts for us.
    for part in raw.split(","):
        part = part.strip().lower()
        if part in LOG_LEVELS:
            return part
        if "=" not in part:
            break
    raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")


def parse_positive_int(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise ValueError(f"expected a positive integer, got {raw!r}")
    return int(raw)


# --- the definition ------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One ``MESHCTL_PROXY_*`` variable."""

    field: str  # attribute name on ProxyConfig
    default: str | None  # as written in the environment; None means required-when-used
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return PREFIX + self.field.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("log_level", "info", parse_log_level, "Log level: trace, debug, info, warn or error."),
    Setting("log_format", "plain", _choice(("plain", "json")), "Log format: plain or json."),
    Setting("inbound_listen_addr", f"0.0.0.0:{INBOUND_PORT}", parse_addr,
            "Where traffic to the application is received (iptables redirects inbound TCP here)."),
    Setting("outbound_listen_addr", f"127.0.0.1:{OUTBOUND_PORT}", parse_addr,
            "Where the application's outbound traffic is received."),
    Setting("admin_listen_addr", f"0.0.0.0:{ADMIN_PORT}", parse_addr,
            "Admin server: /metrics, /ready, /live, /shutdown."),
    Setting("control_listen_addr", f"0.0.0.0:{CONTROL_PORT}", parse_addr,
            "Control listener: tap (live request events, docs/proxy.md \"Tap\")."),
    Setting("tap_svc_name", TAP_SVC_NAME, parse_str,
            "The only client identity allowed to tap when identity is enabled (mTLS); empty disables tap then. "
            "Without identity, tap is served to loopback peers only."),
    Setting("inbound_forward_host", "127.0.0.1", parse_str,
            "Where inbound traffic is forwarded to (the application, on its original port)."),
    Setting("inbound_ports", "", parse_ports, "The application's container ports (informational, for metrics and policy)."),
    Setting("inbound_ports_disable_protocol_detection", "", parse_ports,
            "Inbound opaque ports: forwarded as TCP without protocol detection."),
    Setting("outbound_ports_disable_protocol_detection", "", parse_ports,
            "Outbound opaque ports: forwarded as TCP without protocol detection."),
    Setting("inbound_ports_require_identity", "", parse_ports,
            "Inbound ports that accept only mTLS-authenticated clients."),
    Setting("default_inbound_policy", "all-unauthenticated", _choice(INBOUND_POLICIES),
            "Inbound policy: all-unauthenticated, all-authenticated, cluster-authenticated or deny."),
    Setting("cluster_networks", "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8", parse_networks,
            "Networks considered in-cluster (cluster-authenticated policy)."),
    Setting("detect_timeout", "10s", parse_duration, "How long protocol detection waits for the first bytes."),
    # nginx's client_header_timeout and Node's headersTimeout are both 60 s (docs/security.md, class 5).
    Setting("header_read_timeout", "60s", parse_duration,
            "How long a request head may take to arrive once begun: HTTP/1 answers 408, HTTP/2 sends GOAWAY."),
    Setting("inbound_connect_timeout", "100ms", parse_duration, "Connect timeout towards the application."),
    Setting("outbound_connect_timeout", "1s", parse_duration, "Connect timeout towards other endpoints."),
    Setting("shutdown_grace_period", "30s", parse_duration,
            "On SIGTERM, how long in-flight requests may take before the proxy exits."),
    Setting("shutdown_endpoint_enabled", "false", parse_bool, "Serve POST /shutdown on the admin port (loopback only)."),
    Setting("balancer", "peak-ewma", _choice(BALANCERS), "Outbound load balancer: peak-ewma or round-robin."),
    Setting("destination_svc_addr", "meshctl-dst.meshctl.svc.cluster.local.:8086", parse_addr,
            "The destination service (endpoints and ServiceProfiles)."),
    Setting("destination_svc_name", "meshctl-destination.meshctl.serviceaccount.identity.meshctl.cluster.local", parse_str,
            "The destination service's expected identity."),
    Setting("destination_profile_suffixes", "svc.cluster.local.", parse_str,
            "Names the destination service is asked about (others are forwarded as addressed)."),
    Setting("destination_initial_timeout", "1s", parse_duration,
            "How long a first request for a name waits for the destination service before it is forwarded as addressed."),
    Setting("destination_idle_timeout", "15s", parse_duration,
            "A destination stream silent this long (three missed heartbeats) is reconnected."),
    Setting("outbound_failfast_timeout", "3s", parse_duration,
            "How long a request waits for an available endpoint before it fails fast with 503."),
    Setting("outbound_buffer_capacity", "10000", parse_positive_int,
            "Requests that may wait for an endpoint per destination; more fail at once with 503."),
    Setting("identity_disabled", "false", parse_bool, "Run without mTLS identity (plaintext between proxies)."),
    Setting("identity_svc_addr", "meshctl-identity.meshctl.svc.cluster.local.:8080", parse_addr,
            "The identity service, which signs the proxy's CSR."),
    Setting("identity_svc_name", "meshctl-identity.meshctl.serviceaccount.identity.meshctl.cluster.local", parse_str,
            "The identity service's expected identity."),
    Setting("identity_dir", IDENTITY_DIR, parse_str, "Where the proxy keeps its key and certificate (in-memory volume)."),
    Setting("identity_trust_anchors", "", parse_str, "PEM trust anchors (roots) of the mesh."),
    Setting("identity_token_file", IDENTITY_TOKEN_FILE, parse_str,
            f"Projected ServiceAccount token (audience {IDENTITY_AUDIENCE}) proving who the proxy is."),
    Setting("identity_local_name", "", parse_str,
            "This proxy's identity: SA.NS.serviceaccount.identity.MESHNS.TRUSTDOMAIN."),
    Setting("identity_min_refresh", "10s", parse_duration, "Never renew the certificate more often than this."),
    Setting("pod_name", "", parse_str, "This pod's name (downward API)."),
    Setting("pod_namespace", "", parse_str, "This pod's namespace (downward API)."),
    Setting("pod_service_account", "", parse_str, "This pod's ServiceAccount (downward API)."),
    Setting("workload_kind", "", parse_str, "Owner kind, for metric labels (deployment, statefulset, ...)."),
    Setting("workload_name", "", parse_str, "Owner name, for metric labels."),
    Setting("http2_max_concurrent_streams", "100", parse_positive_int,
            "Streams one HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); "
            "more is answered with GOAWAY(ENHANCE_YOUR_CALM)."),
    Setting("upstream_idle_timeout", "90s", parse_duration,
            "An idle upstream connection (HTTP/1 kept alive, HTTP/2 without open streams) is closed after this "
            "long (hyper's pool default)."),
    Setting("upstream_max_idle", "1024", parse_positive_int,
            "Idle upstream connections kept per direction, across all endpoints; past it the longest idle is closed."),
    Setting("max_authority_labels", "1000", parse_positive_int,
            "Distinct authority label values kept in metrics; the rest are counted under authority=\"overflow\"."),
    Setting("max_metric_series", "10000", parse_positive_int,
            "Series /metrics exposes in all (every family and label); what new series the cap refuses would count "
            "is counted in the overflow series."),
)

SETTINGS_BY_FIELD: Mapping[str, Setting] = {s.field: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxy's parsed configuration: one attribute per Setting.field, in the same order.

    Each field's type is what its Setting's parser returns (tests/test_proxy_config.py
    checks both against SETTINGS, so a new Setting needs its field here).
    """

    log_level: str
    log_format: str
    inbound_listen_addr: tuple[str, int]
    outbound_listen_addr: tuple[str, int]
    admin_listen_addr: tuple[str, int]
    control_listen_addr: tuple[str, int]
    tap_svc_name: str
    inbound_forward_host: str
    inbound_ports: frozenset[int]
    inbound_ports_disable_protocol_detection: frozenset[int]
    outbound_ports_disable_protocol_detection: frozenset[int]
    inbound_ports_require_identity: frozenset[int]
    default_inbound_policy: str
    cluster_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    detect_timeout: float
    header_read_timeout: float
    inbound_connect_timeout: float
    outbound_connect_timeout: float
    shutdown_grace_period: float
    shutdown_endpoint_enabled: bool
    balancer: str
    destination_svc_addr: tuple[str, int]
    destination_svc_name: str
    destination_profile_suffixes: str
    destination_initial_timeout: float
    destination_idle_timeout: float
    outbound_failfast_timeout: float
    outbound_buffer_capacity: int
    identity_disabled: bool
    identity_svc_addr: tuple[str, int]
    identity_svc_name: str
    identity_dir: str
    identity_trust_anchors: str
    identity_token_file: str
    identity_local_name: str
    identity_min_refresh: float
    pod_name: str
    pod_namespace: str
    pod_service_account: str
    workload_kind: str
    workload_name: str
    http2_max_concurrent_streams: int
    upstream_idle_timeout: float
    upstream_max_idle: int
    max_authority_labels: int
    max_metric_series: int


def defaults() -> dict[str, str]:
    """The environment a proxy gets when nothing is overridden (env name -> raw value)."""
    return {s.env: s.default for s in SETTINGS if s.default is not None}


def load(environ: Mapping[str, str]) -> "ProxyConfig":
    """Parse the ``MESHCTL_PROXY_*`` variables of *environ*.

    Unknown ``MESHCTL_PROXY_*`` variables are an error too: a typo must not be
    silently ignored.
    """
    known = {s.env for s in SETTINGS}
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known:
            raise ConfigError(f"{name}: unknown variable (see docs/proxy.md)")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = environ.get(s.env, s.default)
        if raw is None:
            values[s.field] = None
            continue
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{s.env}: {exc}") from None
    return ProxyConfig(**values)


# --- the init step (iptables) ------------------------------------------------
# The init container takes flags, not environment, as linkerd2-proxy-init does.

@dataclasses.dataclass(frozen=True, slots=True)
class InitConfig:
    """Settings of ``meshctl-proxy init`` (what ``inject --manual`` passes as flags)."""

    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    proxy_uid: int = PROXY_UID
    # 4190/4191 are the proxy's own control and admin ports: never redirected.
    inbound_ports_to_ignore: tuple[str, ...] = (str(CONTROL_PORT), str(ADMIN_PORT))
    outbound_ports_to_ignore: tuple[str, ...] = ()
    subnets_to_ignore: tuple[str, ...] = ()

    def to_args(self) -> list[str]:
        args = [
            "--incoming-proxy-port", str(self.inbound_port),
            "--outgoing-proxy-port", str(self.outbound_port),
            "--proxy-uid", str(self.proxy_uid),
        ]
        if self.inbound_ports_to_ignore:
            args += ["--inbound-ports-to-ignore", ",".join(self.inbound_ports_to_ignore)]
        if self.outbound_ports_to_ignore:
            args += ["--outbound-ports-to-ignore", ",".join(self.outbound_ports_to_ignore)]
        if self.subnets_to_ignore:
            args += ["--subnets-to-ignore", ",".join(self.subnets_to_ignore)]
        return args
