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
            out[key] = copy.deepcopy(value)
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


def build_values(*, ha: bool = False, files: list[str] = (), sets: list[str] = (), stored: dict | None = None) -> dict:
    """The effective values: defaults, stored (upgrade), --ha, files, --set."""
    values = default_values()
    if stored:
        values = merge(values, stored, source="installed values (meshctl-config)")
    if ha:
        values = merge(values, HA_OVERLAY, source="--ha")
    for path in files:
        values = merge(values, load_values_file(path), source=path)
    for assignment in sets:
        values = merge(values, parse_set(assignment), source=f"--set {assignment}", error=UsageError)
    return values


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
