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

from meshctl import kubevalues
from meshctl.meshconfig import MeshConfig
from meshctl_proxy import config as proxy_config

CONFIG_PREFIX = "config.meshctl.io/"
INJECT_ANNOTATION = "meshctl.io/inject"
PROXY_VERSION_ANNOTATION = "meshctl.io/proxy-version"
TRUST_ROOT_ANNOTATION = "meshctl.io/trust-root-sha256"

def _quantity(raw: str) -> str:
    kubevalues.parse_quantity(raw)
    return raw


def _pull_policy(raw: str) -> str:
    if raw not in kubevalues.PULL_POLICIES:
        raise ValueError(f"must be one of: {', '.join(kubevalues.PULL_POLICIES)}, got {raw!r}")
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


# An IANA service name, as a container port's `name` (RFC 6335 section 5.1; Kubernetes'
# IsValidPortName): at most 15 characters, lower-case letters, digits and '-', at least one letter.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")


def is_port_name(item: str) -> bool:
    return bool(_PORT_NAME.fullmatch(item)) and "--" not in item


def _ports_or_names(raw: str) -> str:
    """Ports, ranges and port names (``3306,mysql``): Linkerd resolves names against the
    containers' named ports (``--opaque-ports``), and so does meshctl when it renders the proxy."""
    numeric = [part.strip() for part in raw.split(",") if part.strip() and not is_port_name(part.strip())]
    proxy_config.parse_ports(",".join(numeric))
    return raw


def resolve_port_names(raw: str, named: Mapping[str, int]) -> tuple[str, tuple[str, ...]]:
    """``raw`` with each port name replaced by its number from *named*; the names not found."""
    out, missing = [], []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if is_port_name(part):
            if part in named:
                out.append(str(named[part]))
            else:
                missing.append(part)
        else:
            out.append(part)
    return ",".join(dict.fromkeys(out)), tuple(missing)


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
    ProxyFlag("image-pull-policy", "IfNotPresent", _pull_policy, "Pull policy of the proxy and init images."),
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
    ProxyFlag("opaque-ports", None, _ports_or_names,
              "Ports proxied as opaque TCP, without protocol detection (numbers, ranges or container port names)."),
    ProxyFlag("require-identity-on-inbound-ports", None, _ports, "Inbound ports that accept only mTLS clients."),
    ProxyFlag("default-inbound-policy", _setting_default("default_inbound_policy"), _setting("default_inbound_policy"),
              "Inbound policy: all-unauthenticated, all-authenticated, cluster-authenticated or deny."),
    ProxyFlag("native-sidecar", "true", _bool, "Run the proxy as a native sidecar (init container, restartPolicy Always)."),
)
PROXY_FLAGS_BY_NAME: Mapping[str, ProxyFlag] = {f.name: f for f in PROXY_FLAGS}

# Manifests migrating from Linkerd carry Linkerd's annotations (pkg/k8s/labels.go).  meshctl reads
# them as aliases where it has the same setting: `linkerd.io/inject: disabled` keeps a pod out of
# the mesh, and each config annotation below sets the meshctl flag it names; meshctl's own
# annotation wins when both are present.  `linkerd.io/inject: enabled` is not an alias: during a
# migration Linkerd's own injector may still act on it (two sidecars), so inject warns instead.
# Linkerd config annotations with no meshctl equivalent are reported, never silently dropped.
LINKERD_INJECT_ANNOTATION = "linkerd.io/inject"
LINKERD_CONFIG_PREFIXES = ("config.linkerd.io/", "config.alpha.linkerd.io/")
LINKERD_CONFIG_ALIASES: Mapping[str, str] = {
    "config.linkerd.io/proxy-image": "proxy-image",
    "config.linkerd.io/proxy-version": "proxy-version",
    "config.linkerd.io/image-pull-policy": "image-pull-policy",
    "config.linkerd.io/proxy-uid": "proxy-uid",
    "config.linkerd.io/inbound-port": "proxy-inbound-port",
    "config.linkerd.io/outbound-port": "proxy-outbound-port",
    "config.linkerd.io/admin-port": "proxy-admin-port",
    "config.linkerd.io/control-port": "proxy-control-port",
    "config.linkerd.io/proxy-cpu-request": "proxy-cpu-request",
    "config.linkerd.io/proxy-cpu-limit": "proxy-cpu-limit",
    "config.linkerd.io/proxy-memory-request": "proxy-memory-request",
    "config.linkerd.io/proxy-memory-limit": "proxy-memory-limit",
    "config.linkerd.io/proxy-log-level": "proxy-log-level",
    "config.linkerd.io/proxy-log-format": "proxy-log-format",
    "config.linkerd.io/skip-inbound-ports": "skip-inbound-ports",
    "config.linkerd.io/skip-outbound-ports": "skip-outbound-ports",
    "config.linkerd.io/opaque-ports": "opaque-ports",
    "config.linkerd.io/proxy-require-identity-inbound-ports": "require-identity-on-inbound-ports",
    "config.linkerd.io/default-inbound-policy": "default-inbound-policy",
    "config.alpha.linkerd.io/proxy-enable-native-sidecar": "native-sidecar",
}


@dataclasses.dataclass(frozen=True, slots=True)
class AnnotatedConfig:
    """The proxy configuration an object's annotations ask for (meshctl's, and Linkerd's aliases).

    ``values`` maps flag names to the raw annotation values; ``sources`` says which annotation
    each came from.  ``aliased`` lists the Linkerd annotations read as meshctl's, ``shadowed``
    those ignored because meshctl's own annotation is also set, ``unsupported`` those meshctl has
    no equivalent for.
    """

    values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    aliased: tuple[tuple[str, str], ...] = ()
    shadowed: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()

    def notes(self) -> tuple[list[str], list[str]]:
        """(checks, warnings): report lines saying how Linkerd's annotations were read."""
        checks = [f"{linkerd} read as {meshctl} (Linkerd's annotation)" for linkerd, meshctl in self.aliased]
        warnings = [f"{key} ignored: {CONFIG_PREFIX}{LINKERD_CONFIG_ALIASES[key]} is also set and wins"
                    for key in self.shadowed]
        warnings += [f"{key} is Linkerd's and has no meshctl equivalent: ignored (docs/linkerd-differences.md)"
                     for key in self.unsupported]
        return checks, warnings


def read_annotations(annotations: Mapping[str, object]) -> AnnotatedConfig:
    """What ``config.meshctl.io/*`` (and Linkerd's ``config.linkerd.io/*``) annotations configure."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in PROXY_FLAGS_BY_NAME:
        key = CONFIG_PREFIX + name
        if key in annotations and annotations[key] is not None:
            values[name], sources[name] = str(annotations[key]), key
    aliased, shadowed, unsupported = [], [], []
    for key, raw in annotations.items():
        if not isinstance(key, str) or not key.startswith(LINKERD_CONFIG_PREFIXES) or raw is None:
            continue
        name = LINKERD_CONFIG_ALIASES.get(key)
        if name is None:
            unsupported.append(key)
        elif name in values:
            shadowed.append(key)
        else:
            values[name], sources[name] = str(raw), key
            aliased.append((key, CONFIG_PREFIX + name))
    return AnnotatedConfig(values, sources, tuple(aliased), tuple(shadowed), tuple(unsupported))


def inject_disabled_by(annotations: Mapping[str, object]) -> str | None:
    """The annotation that keeps this pod out of the mesh, if any: meshctl's, else Linkerd's."""
    own = annotations.get(INJECT_ANNOTATION)
    if own is not None:
        return INJECT_ANNOTATION if own == "disabled" else None
    return LINKERD_INJECT_ANNOTATION if annotations.get(LINKERD_INJECT_ANNOTATION) == "disabled" else None


class OptionsError(ValueError):
    """A flag value meshctl cannot inject with; the message names the flag."""


def _annotation_error(message: str, read: "AnnotatedConfig") -> str:
    # from_flags names the flag (--proxy-uid: ...); the webhook's user wrote an annotation.
    flag, sep, rest = message.partition(": ")
    name = flag.removeprefix("--")
    return f"{read.sources[name]}: {rest}" if sep and name in read.sources else message


@dataclasses.dataclass(frozen=True, slots=True)
class InjectOptions:
    """What to inject.  ``overrides`` holds only flags that differ from their defaults."""

    manual: bool = False
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    given: frozenset[str] = frozenset()  # flags given on the command line (even at their default value)

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
        given = frozenset(name for name, raw in flags.items() if raw is not None)
        options = cls(manual=manual, overrides=overrides, mesh=mesh or MeshConfig(), given=given)
        options.check_resources()
        return options

    def check_resources(self) -> None:
        """A request above its limit is refused before rendering, with linkerd's message."""
        for kind in ("cpu", "memory"):
            problem = kubevalues.resource_order_error(kind, self.get(f"proxy-{kind}-request"),
                                                      self.get(f"proxy-{kind}-limit"))
            if problem:
                raise OptionsError(problem)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str], *, mesh: MeshConfig | None = None,
                         manual: bool = True) -> "InjectOptions":
        """Options from ``config.meshctl.io/<flag>`` annotations, as the admission webhook reads
        them (the namespace's merged under the pod's, pod wins: the caller merges).

        Unknown ``config.meshctl.io/*`` names are ignored, as Linkerd's injector ignores
        annotations it does not know; a bad value is an :class:`OptionsError`.
        """
        read = read_annotations(annotations)
        flags = {name: read.values.get(name) for name in PROXY_FLAGS_BY_NAME}
        try:
            return cls.from_flags(flags, manual=manual, mesh=mesh)
        except OptionsError as exc:
            raise OptionsError(_annotation_error(str(exc), read)) from None

    def under_annotations(self, annotations: Mapping[str, object]) -> "InjectOptions":
        """These options over a pod's own configuration annotations (the user's settings).

        A flag given on the command line wins; otherwise the pod's ``config.meshctl.io/<flag>``
        (or Linkerd's alias) applies, as the webhook would apply it; otherwise the default.
        A bad annotation value is an :class:`OptionsError` naming the annotation.
        """
        read = read_annotations(annotations)
        overrides = dict(self.overrides)
        for name, raw in read.values.items():
            if name in self.given:
                continue
            flag = PROXY_FLAGS_BY_NAME[name]
            try:
                value = flag.validate(raw.strip())
            except ValueError as exc:
                raise OptionsError(f"{read.sources[name]}: {exc}") from None
            if value != flag.default:
                overrides[name] = value
        options = dataclasses.replace(self, overrides=overrides)
        options.check_resources()
        return options

    def get(self, name: str) -> str | None:
        """The flag's effective value: the override, else its default."""
        return self.overrides.get(name, PROXY_FLAGS_BY_NAME[name].default)

    def annotations_to_write(self, current: Mapping[str, object]) -> dict[str, str]:
        """``config.meshctl.io/*`` annotation mode writes: the flags given, where they change something.

        A flag at its default is written only to replace a different value already annotated;
        an annotation already holding the value is left alone (byte for byte).
        """
        out = {}
        for flag in PROXY_FLAGS:
            if flag.name not in self.given:
                continue
            value = self.get(flag.name) or ""
            present = current.get(flag.annotation)
            if (flag.name in self.overrides or present is not None) and (present is None or str(present) != value):
                out[flag.annotation] = value
        return out

    def config_annotations(self) -> dict[str, str]:
        """``config.meshctl.io/*`` annotations for the overridden flags, in flag order."""
        return {f.annotation: self.overrides[f.name] for f in PROXY_FLAGS if f.name in self.overrides}
