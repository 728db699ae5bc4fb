"""Inject options: the proxy configuration flags, defined once with their defaults.

Each :class:`ProxyFlag` is both a CLI flag (``--proxy-cpu-request``) and, in
annotation mode, a pod annotation (``config.meshctl.io/proxy-cpu-request``), as
Linkerd pairs ``--proxy-cpu-request`` with ``config.linkerd.io/proxy-cpu-request``.
Defaults come from :mod:`meshctl_proxy.config` so the CLI and the proxy agree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from meshctl.meshconfig import MeshConfig
from meshctl_proxy import config as proxy_config
CONFIG_PREFIX = "config.meshctl.io/"
INJECT_ANNOTATION = "meshctl.io/inject"
PROXY_VERSION_ANNOTATION = "meshctl.io/proxy-version"
TRUST_ROOT_ANNOTATION = "meshctl.io/trust-root-sha256"

# Kubernetes resource.Quantity, as apimachinery's regexp accepts it.
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE]|)")


def _quantity(raw: str) -> str:
    if not _QUANTITY.fullmatch(raw):
        raise ValueError(f"expected a Kubernetes quantity such as 100m or 64Mi, got {raw!r}")
    return raw


def _port(raw: str) -> str:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"expected a port 1..65535, got {raw!r}")
    return raw


def _uid(raw: str) -> str:
    if not raw.isdigit():
        raise ValueError(f"expected a numeric user id, got {raw!r}")
    return raw


def _ports(raw: str) -> str:
    proxy_config.parse_ports(raw)
    return raw


def _bool(raw: str) -> str:
    return "true" if proxy_config.parse_bool(raw) else "false"


def _setting(field: str) -> Callable[[str], str]:
    parse = proxy_config.SETTINGS_BY_FIELD[field].parse

    def check(raw: str) -> str:
        parse(raw)
        return raw

    return check


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyFlag:
    name: str  # flag name without dashes == annotation suffix
    default: str | None  # None: unset unless given
    validate: Callable[[str], str]
    help: str

    @property
    def annotation(self) -> str:
        return CONFIG_PREFIX + self.name


def _setting_default(field: str) -> str:
    return proxy_config.SETTINGS_BY_FIELD[field].default or ""


PROXY_FLAGS: tuple[ProxyFlag, ...] = (
    ProxyFlag("proxy-image", None, _nonempty, "Proxy container image (default: the installed mesh's)."),
    ProxyFlag("proxy-version", None, _nonempty, "Proxy image tag (default: the installed mesh's version)."),
    ProxyFlag("image-pull-policy", "IfNotPresent", _nonempty, "Pull policy of the proxy and init images."),
    ProxyFlag("proxy-uid", str(proxy_config.PROXY_UID), _uid, "User id the proxy runs as (iptables skips its traffic)."),
    ProxyFlag("proxy-inbound-port", str(proxy_config.INBOUND_PORT), _port, "Proxy port for inbound traffic."),
    ProxyFlag("proxy-outbound-port", str(proxy_config.OUTBOUND_PORT), _port, "Proxy port for outbound traffic."),
    ProxyFlag("proxy-admin-port", str(proxy_config.ADMIN_PORT), _port, "Proxy admin port (/metrics, /ready, /live)."),
    ProxyFlag("proxy-control-port", str(proxy_config.CONTROL_PORT), _port, "Proxy control (tap) port."),
    ProxyFlag("proxy-cpu-request", None, _quantity, "CPU request of the proxy container (e.g. 100m)."),
    ProxyFlag("proxy-cpu-limit", None, _quantity, "CPU limit of the proxy container."),
    ProxyFlag("proxy-memory-request", None, _quantity, "Memory request of the proxy container (e.g. 20Mi)."),
    ProxyFlag("proxy-memory-limit", None, _quantity, "Memory limit of the proxy container."),
    ProxyFlag("proxy-log-level", _setting_default("log_level"), _setting("log_level"), "Proxy log level."),
    ProxyFlag("proxy-log-format", _setting_default("log_format"), _setting("log_format"), "Proxy log format: plain or json."),
    ProxyFlag("skip-inbound-ports", None, _ports, "Inbound ports (and ranges) that bypass the proxy."),
    ProxyFlag("skip-outbound-ports", None, _ports, "Outbound ports (and ranges) that bypass the proxy."),
    ProxyFlag("opaque-ports", None, _ports, "Ports proxied as opaque TCP, without protocol detection."),
    ProxyFlag("require-identity-on-inbound-ports", None, _ports, "Inbound ports that accept only mTLS clients."),
    ProxyFlag("default-inbound-policy", _setting_default("default_inbound_policy"), _setting("default_inbound_policy"),
              "Inbound policy: all-unauthenticated, all-authenticated, cluster-authenticated or deny."),
    ProxyFlag("native-sidecar", "true", _bool, "Run the proxy as a native sidecar (init container, restartPolicy Always)."),
)
PROXY_FLAGS_BY_NAME: Mapping[str, ProxyFlag] = {f.name: f for f in PROXY_FLAGS}


class OptionsError(ValueError):
    """A flag value meshctl cannot inject with; the message names the flag."""


@dataclasses.dataclass(frozen=True, slots=True)
class InjectOptions:
    """What to inject.  ``overrides`` holds only flags that differ from their defaults."""

    manual: bool = False
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    @classmethod
    def from_flags(cls, flags: Mapping[str, str | None], *, manual: bool = False,
                   mesh: MeshConfig | None = None) -> "InjectOptions":
        """Validate flag values (by flag name); unset (None) and default values are dropped."""
        overrides: dict[str, str] = {}
        for name, raw in flags.items():
            flag = PROXY_FLAGS_BY_NAME.get(name)
            if flag is None:
                raise OptionsError(f"unknown proxy flag {name!r}")
            if raw is None:
                continue
            try:
                value = flag.validate(str(raw).strip())
            except ValueError as exc:
                raise OptionsError(f"--{name}: {exc}") from None
            if value != flag.default:
                overrides[name] = value
        return cls(manual=manual, overrides=overrides, mesh=mesh or MeshConfig())

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str], *, mesh: MeshConfig | None = None,
                         manual: bool = True) -> "InjectOptions":
        """Options from ``config.meshctl.io/<flag>`` annotations, as the admission webhook reads
        them (the namespace's merged under the pod's, pod wins: the caller merges).

        Unknown ``config.meshctl.io/*`` names are ignored, as Linkerd's injector ignores
        annotations it does not know; a bad value is an :class:`OptionsError`.
        """
        flags = {name: annotations.get(CONFIG_PREFIX + name) for name in PROXY_FLAGS_BY_NAME}
        return cls.from_flags(flags, manual=manual, mesh=mesh)

    def get(self, name: str) -> str | None:
        """The flag's effective value: the override, else its default."""
        return self.overrides.get(name, PROXY_FLAGS_BY_NAME[name].default)

    def config_annotations(self) -> dict[str, str]:
        """``config.meshctl.io/*`` annotations for the overridden flags, in flag order."""
        return {f.annotation: self.overrides[f.name] for f in PROXY_FLAGS if f.name in self.overrides}
