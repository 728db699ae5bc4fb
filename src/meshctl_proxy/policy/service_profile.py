"""The ServiceProfile model: one definition for the CLI, the control plane and the proxy.

``meshctl profile`` emits it, ``meshctl profile --validate`` checks it, the
destination service serves it and the proxy matches routes and classifies
responses with it.  Standard library only and cheap to import: the proxy loads
it at start-up.  The Kubernetes contract is the CRD in
``manifests/crds/serviceprofile.yaml`` (``serviceprofiles.meshctl.io``,
``v1alpha2``, the same shape as Linkerd's ``linkerd.io/v1alpha2``).

The API (everything else is private):

``ServiceProfile.from_dict(obj)``
    Parse and validate a Kubernetes object.  Every problem is collected with
    its path (``spec.routes[2].condition.pathRegex: ...``) and raised together
    as one :class:`ProfileError` (``.problems`` is the list).
``ServiceProfile.to_dict()``
    The Kubernetes object, keys in a stable order, defaults omitted.
``ServiceProfile.route_for(method, path)``
    The first route whose condition matches, or ``None`` (Linkerd: "if a
    request matches more than one route, the first match wins").
``RequestMatch.matches(method, path)``
    ``pathRegex`` must match the *whole* path (``re.fullmatch``; Linkerd's
    proxy anchors it as ``^(?:re)$`` too).  The path is the request target's
    path without the query string.  ``method`` compares exactly: methods are
    case-sensitive (RFC 9110 section 9.1).  Several fields set in one match
    must all hold; ``all``/``any``/``not`` combine matches.
``ResponseMatch.matches(status)`` / ``ResponseClass.matches(status)``
    ``status`` is an inclusive range; a range with only ``min`` or only
    ``max`` matches that one code (Linkerd's documented behaviour).
``is_failure(status, response_classes)`` / ``Route.is_failure(status)``
    The first matching response class decides; when none matches, 5xx is a
    failure and everything else a success (Linkerd's default classifier).
``RetryBudget``
    ``retry_ratio`` 0.2, ``min_retries_per_second`` 10, ``ttl`` 10s by
    default (:data:`DEFAULT_RETRY_BUDGET`); ``ttl_seconds`` is parsed.
``Route.timeout_seconds``
    The parsed ``timeout``, or ``None`` for the proxy's default
    (:data:`DEFAULT_ROUTE_TIMEOUT`, Linkerd's 10s).

Regular expressions are compiled once, when the model is built.  They use
Python's ``re`` dialect; patterns the generator writes (escaped literals and
``[^/]*``) mean the same in Go's RE2 and Rust's ``regex``.
Durations are Go-style (``100ms``, ``10s``, ``1m30s``), parsed by
:func:`meshctl_proxy.config.parse_duration`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from meshctl_proxy.config import parse_duration

API_VERSION = "meshctl.io/v1alpha2"
KIND = "ServiceProfile"
DEFAULT_ROUTE_TIMEOUT = 10.0  # seconds; Linkerd's default route timeout
STATUS_MIN, STATUS_MAX = 100, 599  # RFC 9110 section 15: three-digit codes 1xx..5xx

# RFC 9110 section 5.6.2: a method is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 1123 subdomain, as Kubernetes validates object names.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kubernetes resource.Quantity, the type of Linkerd's dstOverrides[].weight.
_QUANTITY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_QUANTITY_SCALE = {None: 1000, "m": 1, "k": 10**6, "M": 10**9, "G": 10**12, "T": 10**15,
                   "Ki": 1024 * 1000, "Mi": 1024**2 * 1000, "Gi": 1024**3 * 1000, "Ti": 1024**4 * 1000}


class ProfileError(ValueError):
    """A ServiceProfile that cannot be used; ``problems`` lists every one, each with its path."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    path: str  # dotted path into the object, e.g. spec.routes[0].timeout
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# --- the model -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class RequestMatch:
    """Which requests belong to a route.  Fields set together must all hold."""

    method: str | None = None
    path_regex: str | None = None
    all: tuple[RequestMatch, ...] | None = None
    any: tuple[RequestMatch, ...] | None = None
    not_: RequestMatch | None = None
    _path_re: re.Pattern | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # No all/any/not: matches() is decided by method and path alone (the common case, asked per request).
    _leaf: bool = dataclasses.field(default=True, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path_regex is not None:
            object.__setattr__(self, "_path_re", re.compile(self.path_regex))
        object.__setattr__(self, "_leaf", self.all is None and self.any is None and self.not_ is None)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self._path_re is not None and self._path_re.fullmatch(path) is None:
            return False
        return self._leaf or _combinators_hold(self, lambda m: m.matches(method, path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.method is not None:
            out["method"] = self.method
        if self.path_regex is not None:
            out["pathRegex"] = self.path_regex
        return _combinators_to_dict(self, out)


@dataclasses.dataclass(frozen=True, slots=True)
class StatusRange:
    """An inclusive range of HTTP status codes; a missing bound equals the other one."""

    min: int | None = None
    max: int | None = None

    def contains(self, status: int) -> bool:
        lo = self.min if self.min is not None else self.max
        hi = self.max if self.max is not None else self.min
        return lo <= status <= hi  # type: ignore[operator]

    def to_dict(self) -> dict[str, int]:
        out = {}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseMatch:
    """Which responses belong to a response class.  Fields set together must all hold."""

    status: StatusRange | None = None
    all: tuple[ResponseMatch, ...] | None = None
    any: tuple[ResponseMatch, ...] | None = None
    not_: ResponseMatch | None = None

    def matches(self, status: int) -> bool:
        if self.status is not None and not self.status.contains(status):
            return False
        return _combinators_hold(self, lambda m: m.matches(status))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.status is not None:
            out["status"] = self.status.to_dict()
        return _combinators_to_dict(self, out)


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseClass:
    condition: ResponseMatch
    is_failure: bool = False

    def matches(self, status: int) -> bool:
        return self.condition.matches(status)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"condition": self.condition.to_dict()}
        if self.is_failure:
            out["isFailure"] = True
        return out


def is_failure(status: int, response_classes: Iterable[ResponseClass] = ()) -> bool:
    """Classify a response: the first matching class decides, else 5xx fails (Linkerd's default)."""
    for rc in response_classes:
        if rc.condition.matches(status):
            return rc.is_failure
    return 500 <= status <= 599


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    name: str
    condition: RequestMatch
    response_classes: tuple[ResponseClass, ...] = ()
    is_retryable: bool = False
    timeout: str | None = None  # as written (Go duration); see timeout_seconds
    timeout_seconds: float | None = dataclasses.field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.timeout is not None:
            object.__setattr__(self, "timeout_seconds", parse_duration(self.timeout))

    def matches(self, method: str, path: str) -> bool:
        return self.condition.matches(method, path)

    def is_failure(self, status: int) -> bool:
        return is_failure(status, self.response_classes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "condition": self.condition.to_dict()}
        if self.response_classes:
            out["responseClasses"] = [rc.to_dict() for rc in self.response_classes]
        if self.is_retryable:
            out["isRetryable"] = True
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many retries a client may add (Linkerd's defaults: 20% more, 10/s floor, 10s window)."""

    retry_ratio: float = 0.2
    min_retries_per_second: int = 10
    ttl: str = "10s"
    ttl_seconds: float = dataclasses.field(default=10.0, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ttl_seconds", parse_duration(self.ttl))

    def to_dict(self) -> dict[str, Any]:
        return {"retryRatio": self.retry_ratio, "minRetriesPerSecond": self.min_retries_per_second, "ttl": self.ttl}


DEFAULT_RETRY_BUDGET = RetryBudget()


@dataclasses.dataclass(frozen=True, slots=True)
class DstOverride:
    """A weighted alternate destination (traffic split); ``weight`` is a Kubernetes quantity."""

    authority: str
    weight: int | str = 1

    @property
    def weight_milli(self) -> int:
        """The weight in thousandths (``"500m"`` is 500, ``1`` is 1000)."""
        return _quantity_milli(str(self.weight))

    def to_dict(self) -> dict[str, Any]:
        return {"authority": self.authority, "weight": self.weight}


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceProfile:
    name: str  # SERVICE.NAMESPACE.svc.CLUSTER-DOMAIN for an in-cluster service
    namespace: str | None = None
    routes: tuple[Route, ...] = ()
    retry_budget: RetryBudget | None = None
    dst_overrides: tuple[DstOverride, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def route_for(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if route.condition.matches(method, path):
                return route
        return None

    def to_dict(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            metadata["namespace"] = self.namespace
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {"routes": [r.to_dict() for r in self.routes]}
        if self.retry_budget is not None:
            spec["retryBudget"] = self.retry_budget.to_dict()
        if self.dst_overrides:
            spec["dstOverrides"] = [d.to_dict() for d in self.dst_overrides]
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}

    @classmethod
    def from_dict(cls, obj: Any) -> ServiceProfile:
        """Parse a Kubernetes ServiceProfile object; raise ProfileError listing every problem."""
        reader = _Reader()
        profile = reader.profile(obj)
        if reader.problems:
            raise ProfileError(reader.problems)
        assert profile is not None
        return profile


def _combinators_hold(match, test) -> bool:
    """``all``/``any``/``not`` of a request or response match, each child checked with *test*."""
    if match.all is not None and not all(test(m) for m in match.all):
        return False
    if match.any is not None and not any(test(m) for m in match.any):
        return False
    return match.not_ is None or not test(match.not_)


def _combinators_to_dict(match, out: dict[str, Any]) -> dict[str, Any]:
    if match.all is not None:
        out["all"] = [m.to_dict() for m in match.all]
    if match.any is not None:
        out["any"] = [m.to_dict() for m in match.any]
    if match.not_ is not None:
        out["not"] = match.not_.to_dict()
    return out


# --- parsing and validation ------------------------------------------------------

def _quantity_milli(text: str) -> int:
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise ValueError(f"expected a quantity such as 1, 500m or 10, got {text!r}")
    return round(float(m.group(1)) * _QUANTITY_SCALE[m.group(2)])


class _Reader:
    """Walks a plain object, building the model and collecting problems with their paths."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> Any:
        """Record a problem; None, for the ``x = ... if present else self.fail(...)`` idiom."""
        self.problems.append(Problem(path, message))
        return None

    def mapping(self, value: Any, path: str, known: tuple[str, ...], *, strict: bool = True) -> Mapping | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected an object, got {_kind(value)}")
            return None
        if strict:
            for key in value:
                if key not in known:
                    self.fail(_join(path, str(key)), f"unknown field (expected one of: {', '.join(known)})")
        return value

    def sequence(self, value: Any, path: str) -> list | None:
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {_kind(value)}")
            return None
        return value

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_kind(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {_kind(value)}")
            return False
        return value

    def duration(self, value: Any, path: str, *, positive: bool) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.fail(path, f"must be greater than 0, got {text!r}")
            return None
        return text

    def string_map(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        m = self.mapping(value, path, (), strict=False)
        if m is None:
            return ()
        out = []
        for k, v in m.items():
            if isinstance(k, str) and isinstance(v, str):
                out.append((k, v))
            else:
                self.fail(_join(path, str(k)), "keys and values must be strings")
        return tuple(out)

    # -- the object

    def profile(self, obj: Any) -> ServiceProfile | None:
        top = self.mapping(obj, "", ("apiVersion", "kind", "metadata", "spec"))
        if top is None:
            return None
        api_version = top.get("apiVersion")
        if api_version != API_VERSION:
            hint = " (a Linkerd profile carries over: change the group to meshctl.io)" \
                if isinstance(api_version, str) and api_version.startswith("linkerd.io/") else ""
            self.fail("apiVersion", f"expected {API_VERSION}, got {api_version!r}{hint}")
        if top.get("kind") != KIND:
            self.fail("kind", f"expected {KIND}, got {top.get('kind')!r}")
        name, namespace, labels, annotations = self.metadata(top.get("metadata"))
        spec = self.mapping(top.get("spec"), "spec", ("routes", "retryBudget", "dstOverrides")) \
            if "spec" in top else self.fail("spec", "missing")
        routes: list[Route] = []
        budget = None
        overrides: list[DstOverride] = []
        if spec is not None:
            raw_routes = self.sequence(spec.get("routes", []), "spec.routes")
            for i, raw in enumerate(raw_routes or ()):
                route = self.route(raw, f"spec.routes[{i}]")
                if route is not None:
                    routes.append(route)
            if "retryBudget" in spec:
                budget = self.retry_budget(spec["retryBudget"], "spec.retryBudget")
            for i, raw in enumerate(self.sequence(spec.get("dstOverrides", []), "spec.dstOverrides") or ()):
                dst = self.dst_override(raw, f"spec.dstOverrides[{i}]")
                if dst is not None:
                    overrides.append(dst)
        if self.problems or name is None:
            return None
        return ServiceProfile(name=name, namespace=namespace, routes=tuple(routes), retry_budget=budget,
                              dst_overrides=tuple(overrides), labels=labels, annotations=annotations)

    def metadata(self, value: Any):
        # Server-populated fields (uid, resourceVersion, managedFields...) are
        # accepted and dropped: `kubectl get -o yaml` output must validate.
        meta = self.mapping(value, "metadata", (), strict=False)
        if meta is None:
            return None, None, (), ()
        name = self.string(meta.get("name"), "metadata.name") if "name" in meta else self.fail("metadata.name", "missing")
        if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
            self.fail("metadata.name", f"{name!r} is not a valid DNS subdomain "
                                       "(expected SERVICE.NAMESPACE.svc.CLUSTER-DOMAIN)")
            name = None
        namespace = self.string(meta["namespace"], "metadata.namespace") if meta.get("namespace") is not None else None
        labels = self.string_map(meta.get("labels"), "metadata.labels")
        annotations = self.string_map(meta.get("annotations"), "metadata.annotations")
        return name, namespace, labels, annotations

    def route(self, value: Any, path: str) -> Route | None:
        raw = self.mapping(value, path, ("name", "condition", "responseClasses", "isRetryable", "timeout"))
        if raw is None:
            return None
        before = len(self.problems)
        name = self.string(raw["name"], _join(path, "name")) if "name" in raw else self.fail(_join(path, "name"), "missing")
        if name == "":
            self.fail(_join(path, "name"), "must not be empty")
        condition = self.request_match(raw["condition"], _join(path, "condition")) \
            if "condition" in raw else self.fail(_join(path, "condition"), "missing")
        classes = []
        for i, rc in enumerate(self.sequence(raw.get("responseClasses", []), _join(path, "responseClasses")) or ()):
            cls = self.response_class(rc, f"{path}.responseClasses[{i}]")
            if cls is not None:
                classes.append(cls)
        retryable = self.boolean(raw["isRetryable"], _join(path, "isRetryable")) if "isRetryable" in raw else False
        timeout = self.duration(raw["timeout"], _join(path, "timeout"), positive=True) if "timeout" in raw else None
        if len(self.problems) != before:
            return None
        assert name is not None and condition is not None  # each missing one was a problem
        return Route(name=name, condition=condition, response_classes=tuple(classes), is_retryable=retryable,
                     timeout=timeout)

    def request_match(self, value: Any, path: str) -> RequestMatch | None:
        raw = self.mapping(value, path, ("method", "pathRegex", "all", "any", "not"))
        if raw is None:
            return None
        before = len(self.problems)
        if not raw:
            # Linkerd: "A request match must have a field set".
            self.fail(path, "a request match must set at least one of method, pathRegex, all, any, not")
        method = self.string(raw["method"], _join(path, "method")) if "method" in raw else None
        if method is not None and not _TOKEN.fullmatch(method):
            self.fail(_join(path, "method"), f"{method!r} is not an HTTP method token (RFC 9110 section 9.1)")
        regex = self.string(raw["pathRegex"], _join(path, "pathRegex")) if "pathRegex" in raw else None
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                self.fail(_join(path, "pathRegex"), f"bad regular expression {regex!r}: {exc}")
        all_ = self.children(raw, "all", path, self.request_match)
        any_ = self.children(raw, "any", path, self.request_match)
        not_ = self.request_match(raw["not"], _join(path, "not")) if "not" in raw else None
        if len(self.problems) != before:
            return None
        return RequestMatch(method=method, path_regex=regex, all=all_, any=any_, not_=not_)

    def children(self, raw: Mapping, key: str, path: str, parse) -> tuple | None:
        """The ``all``/``any`` list of a request or response match, each item parsed by *parse*."""
        if key not in raw:
            return None
        items = self.sequence(raw[key], _join(path, key))
        return tuple(parse(m, f"{path}.{key}[{i}]") for i, m in enumerate(items or ()))

    def response_class(self, value: Any, path: str) -> ResponseClass | None:
        raw = self.mapping(value, path, ("condition", "isFailure"))
        if raw is None:
            return None
        condition = self.response_match(raw["condition"], _join(path, "condition")) \
            if "condition" in raw else self.fail(_join(path, "condition"), "missing")
        failure = self.boolean(raw["isFailure"], _join(path, "isFailure")) if "isFailure" in raw else False
        return ResponseClass(condition=condition, is_failure=failure) if condition is not None else None

    def response_match(self, value: Any, path: str) -> ResponseMatch | None:
        raw = self.mapping(value, path, ("status", "all", "any", "not"))
        if raw is None:
            return None
        before = len(self.problems)
        if not raw:
            self.fail(path, "a response match must set at least one of status, all, any, not")
        status = self.status_range(raw["status"], _join(path, "status")) if "status" in raw else None
        all_ = self.children(raw, "all", path, self.response_match)
        any_ = self.children(raw, "any", path, self.response_match)
        not_ = self.response_match(raw["not"], _join(path, "not")) if "not" in raw else None
        if len(self.problems) != before:
            return None
        return ResponseMatch(status=status, all=all_, any=any_, not_=not_)


    def status_range(self, value: Any, path: str) -> StatusRange | None:
        raw = self.mapping(value, path, ("min", "max"))
        if raw is None:
            return None
        before = len(self.problems)
        bounds = {}
        for key in ("min", "max"):
            if key not in raw:
                continue
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(_join(path, key), f"expected an integer, got {_kind(v)}")
            elif not STATUS_MIN <= v <= STATUS_MAX:
                self.fail(_join(path, key), f"status {v} out of range {STATUS_MIN}..{STATUS_MAX}")
            else:
                bounds[key] = v
        if not raw:
            self.fail(path, "set min, max or both")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            self.fail(path, f"min {bounds['min']} is greater than max {bounds['max']}")
        if len(self.problems) != before:
            return None
        return StatusRange(**bounds)

    def retry_budget(self, value: Any, path: str) -> RetryBudget | None:
        raw = self.mapping(value, path, ("retryRatio", "minRetriesPerSecond", "ttl"))
        if raw is None:
            return None
        before = len(self.problems)
        ratio = raw.get("retryRatio", DEFAULT_RETRY_BUDGET.retry_ratio)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < float("inf"):
            self.fail(_join(path, "retryRatio"), f"expected a number >= 0, got {ratio!r}")
        per_second = raw.get("minRetriesPerSecond", DEFAULT_RETRY_BUDGET.min_retries_per_second)
        # int32 in Linkerd's CRD.
        if isinstance(per_second, bool) or not isinstance(per_second, int) or not 0 <= per_second < 2**31:
            self.fail(_join(path, "minRetriesPerSecond"), f"expected an integer >= 0, got {per_second!r}")
        ttl = self.duration(raw["ttl"], _join(path, "ttl"), positive=True) if "ttl" in raw else DEFAULT_RETRY_BUDGET.ttl
        if len(self.problems) != before:
            return None
        assert ttl is not None  # a bad one was a problem
        return RetryBudget(retry_ratio=ratio, min_retries_per_second=per_second, ttl=ttl)

    def dst_override(self, value: Any, path: str) -> DstOverride | None:
        raw = self.mapping(value, path, ("authority", "weight"))
        if raw is None:
            return None
        before = len(self.problems)
        authority = self.string(raw["authority"], _join(path, "authority")) \
            if "authority" in raw else self.fail(_join(path, "authority"), "missing")
        if authority == "":
            self.fail(_join(path, "authority"), "must not be empty")
        # Required, as in Linkerd's CRD: an override without a weight is a mistake, not "1".
        weight = raw.get("weight")
        if "weight" not in raw:
            self.fail(_join(path, "weight"), "missing")
        elif isinstance(weight, bool) or not isinstance(weight, (int, str)):
            self.fail(_join(path, "weight"), f"expected an integer or a quantity string, got {_kind(weight)}")
        else:
            try:
                _quantity_milli(str(weight))
            except ValueError as exc:
                self.fail(_join(path, "weight"), str(exc))
        if len(self.problems) != before:
            return None
        assert authority is not None and weight is not None  # each missing one was a problem
        return DstOverride(authority=authority, weight=weight)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
