"""Install values: defaults from ``manifests/values.yaml``, then ``--ha``,
then ``-f`` files in order, then ``--set`` in order (Helm's precedence, as
``linkerd install`` applies it).

Every key must exist in the defaults: a typo is an error naming the key and
where it came from, never silently ignored.
"""

from __future__ import annotations

import copy
from importlib import resources

import yaml

from meshctl.errors import InputError, UsageError

# Linkerd's values-ha.yaml, in our keys.
HA_OVERLAY = {
    "ha": True,
    "controllerReplicas": 3,
    "enablePodAntiAffinity": True,
    "enablePodDisruptionBudget": True,
    "controllerResources": {"requests": {"cpu": "100m", "memory": "50Mi"}, "limits": {"memory": "250Mi"}},
}

# Keys whose value is free-form (a Kubernetes resources block): not checked key by key.
FREE_FORM = {"controllerResources", "proxy.resources"}


def default_values() -> dict:
    text = resources.files("meshctl").joinpath("manifests/values.yaml").read_text()
    return yaml.safe_load(text)


def merge(base: dict, overlay: dict, *, source: str, prefix: str = "", error: type = InputError) -> dict:
    """*overlay* onto *base*; keys unknown to *base* are an *error* naming *source*.

    *error* is :class:`UsageError` for ``--set`` (the command line is wrong, exit 2),
    :class:`InputError` for a values file (exit 1).
    """
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise error(f"{source}: unknown value {path!r} (see manifests/values.yaml)")
        if path in FREE_FORM:
            if not isinstance(value, dict):
                raise error(f"{source}: {path} must be a mapping")
            # Merged key by key, as Helm merges maps: `--set x.requests.cpu=1 --set x.limits.cpu=2` keeps both.
            out[key] = _deep_merge(base[key] if isinstance(base[key], dict) else {}, value)
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise error(f"{source}: {path} must be a mapping, got {type(value).__name__}")
            out[key] = merge(base[key], value, source=source, prefix=path + ".", error=error)
        else:
            if isinstance(value, (dict, list)):
                raise error(f"{source}: {path} must be a single value, got a {type(value).__name__}")
            if isinstance(base[key], bool) and not isinstance(value, bool):
                raise error(f"{source}: {path} must be true or false, got {value!r}")
            if isinstance(base[key], int) and not isinstance(base[key], bool) and \
                    (isinstance(value, bool) or not isinstance(value, int)):
                raise error(f"{source}: {path} must be an integer, got {value!r}")
            out[key] = "" if value is None else (value if not isinstance(base[key], str) else str(value))
    return out


def _deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def parse_set(assignment: str) -> dict:
    """``a.b=c`` as a nested mapping; the value is parsed as a YAML scalar (``3``, ``true``)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip() or any(not part for part in key.split(".")):
        raise UsageError(f"--set {assignment!r}: expected KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def load_values_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of values, got {type(data).__name__}")
    return data


def build_values(*, ha: bool = False, files: list[str] = (), sets: list[str] = (), stored: dict | None = None,
                 flags: dict[str, tuple[str, object]] | None = None) -> dict:
    """The effective values: defaults, stored (upgrade), --ha, files, flags, --set; then checked.

    *flags* maps a dotted value path to (the flag that set it, its value), e.g.
    ``{"image.pullPolicy": ("--image-pull-policy", "Never")}``.
    """
    values = default_values()
    if stored:
        values = merge(values, stored, source="installed values (meshctl-config)")
    if ha:
        values = merge(values, HA_OVERLAY, source="--ha")
    for path in files:
        values = merge(values, load_values_file(path), source=path)
    origin: dict[str, str] = {}  # dotted path -> the command-line flag that set it last
    for dotted, (flag, value) in (flags or {}).items():
        values = merge(values, _nest(dotted, value), source=flag, error=UsageError)
        origin[dotted] = flag
    for assignment in sets:
        overlay = parse_set(assignment)
        values = merge(values, overlay, source=f"--set {assignment}", error=UsageError)
        origin.update({dotted: f"--set {assignment}" for dotted in _paths(overlay)})
    check_values(values, origin=origin)
    return values


def _nest(dotted: str, value: object) -> dict:
    out: dict = {}
    cur = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def _paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in FREE_FORM:
            out += _paths(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def check_values(values: dict, *, origin: dict[str, str] | None = None) -> None:
    """Refuse, before anything is rendered, a value the API server (or a controller) would refuse.

    The error names the value and where it came from; one set on the command line (a flag or
    ``--set``) is a :class:`UsageError` (exit 2), one from a values file an :class:`InputError`.
    """
    origin = origin or {}
    for path, problem in _problems(values):
        flag = next((origin[p] for p in origin if path == p or path.startswith(p + ".")), None)
        if flag is None:
            raise InputError(f"{path}: {problem}")
        if flag.startswith("--set"):
            raise UsageError(f"{flag}: {path}: {problem}")
        raise UsageError(f"{flag}: {problem}")


def _problems(values: dict):
    """(dotted path, problem) for every value outside its domain, in a fixed order."""
    from meshctl import kubevalues
    from meshctl.errors import UsageError as _Usage
    from meshctl_proxy import config as proxy_config

    image = values["image"]
    if not str(image["name"]).strip() or any(c.isspace() for c in str(image["name"])):
        yield "image.name", f"{image['name']!r} is not a valid image name"
    if image["pullPolicy"] not in kubevalues.PULL_POLICIES:
        yield "image.pullPolicy", f"must be one of: {', '.join(kubevalues.PULL_POLICIES)}, got {image['pullPolicy']!r}"
    for key in ("clusterDomain", "identityTrustDomain"):
        try:
            kubevalues.check_cluster_domain(str(values[key]))
        except _Usage:
            yield key, f"{values[key]!r} is not a DNS subdomain"
    try:
        proxy_config.parse_networks(str(values["clusterNetworks"]))
    except ValueError as exc:
        yield "clusterNetworks", str(exc)
    if values["controllerReplicas"] < 1:
        yield "controllerReplicas", f"must be at least 1, got {values['controllerReplicas']}"
    try:
        proxy_config.SETTINGS_BY_FIELD["log_level"].parse(str(values["proxy"]["logLevel"]))
    except ValueError as exc:
        yield "proxy.logLevel", str(exc)
    if not 0 <= values["proxy"]["uid"] < 2 ** 31:
        yield "proxy.uid", f"expected a user id in 0..2147483647, got {values['proxy']['uid']}"
    injector = values["proxyInjector"]
    if injector["failurePolicy"] not in ("Ignore", "Fail"):
        yield "proxyInjector.failurePolicy", f"must be Ignore or Fail, got {injector['failurePolicy']!r}"
    # admissionregistration/v1: timeoutSeconds must be between 1 and 30.
    if not 1 <= injector["timeoutSeconds"] <= 30:
        yield "proxyInjector.timeoutSeconds", f"must be between 1 and 30, got {injector['timeoutSeconds']}"
    try:
        if proxy_config.parse_duration(str(values["identity"]["issuer"]["lifetime"])) <= 0:
            raise ValueError("expected a duration greater than 0")
    except ValueError as exc:
        yield "identity.issuer.lifetime", str(exc)
    for key in ("controllerResources", "proxy.resources"):
        block = values["controllerResources"] if key == "controllerResources" else values["proxy"]["resources"]
        yield from _resource_problems(key, block)


def _resource_problems(key: str, block: dict):
    from meshctl import kubevalues

    for part, entries in block.items():
        if part not in ("requests", "limits") or not isinstance(entries, dict):
            yield f"{key}.{part}", "expected requests or limits, a mapping of cpu and memory"
            return
        for resource, raw in entries.items():
            try:
                kubevalues.parse_quantity(str(raw))
            except ValueError as exc:
                yield f"{key}.{part}.{resource}", str(exc)
                return
    for resource in ("cpu", "memory"):
        problem = kubevalues.resource_order_error(resource, (block.get("requests") or {}).get(resource),
                                                  (block.get("limits") or {}).get(resource))
        if problem:
            yield f"{key}.limits.{resource}", problem


def overrides(values: dict, base: dict | None = None) -> dict:
    """What differs from the defaults, minus certificates and keys (stored for `meshctl upgrade`)."""
    base = default_values() if base is None else base
    out = {}
    for key, value in values.items():
        if key in ("identity", "proxyInjector") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if not k.endswith("PEM")}
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in FREE_FORM:
            sub = overrides(value, base[key])
            if sub:
                out[key] = sub
        elif value != base.get(key):
            out[key] = value
    return out
