"""ServiceProfiles from Swagger 2.0 and OpenAPI 3.0/3.1 specs.

The rules (docs/profiles.md):

- the spec is validated with openapi-spec-validator first (imported here,
  lazily: it costs about 0.25 s), after our own checks that every ``$ref`` is
  local, resolvable and not a cycle of references (the validator recurses
  forever on those, and would fetch remote ones);
- the base path is Swagger's ``basePath``, or the path of the first entry of the
  most specific OpenAPI ``servers`` list (operation, then path item, then root),
  with server variables replaced by their defaults.  Linkerd reads only
  ``basePath`` and so drops the prefix of every OpenAPI 3 spec;
- one route per operation, named ``METHOD /base/path/{param}``; ``pathRegex``
  escapes regex metacharacters and turns each ``{param}`` into ``[^/]*``
  (one path segment, possibly empty), and matches the whole path;
- one response class per numeric status code of the operation, ``isFailure``
  for 5xx;
- ``x-meshctl-retryable`` / ``x-meshctl-timeout`` on an operation, or Linkerd's
  ``x-linkerd-retryable`` / ``x-linkerd-timeout`` so existing specs carry over
  (meshctl's wins when both are given);
- routes sorted by path, then method, response classes by status: the same
  spec always gives the same bytes.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from meshctl.errors import InputError
from meshctl.profiles.text import MAX_DEPTH, MAX_NODES, one_line, parse_document
from meshctl_proxy.config import parse_duration
from meshctl_proxy.policy.service_profile import (
    RequestMatch, ResponseClass, ResponseMatch, Route, ServiceProfile, StatusRange,
)

# OpenAPI's operation keys (3.x path item; Swagger 2.0 has the same minus trace).
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_PARAM = re.compile(r"\{[^{}/]*\}")
_STATUS = re.compile(r"[1-5][0-9][0-9]")
# Go's regexp.QuoteMeta set: escaping only these keeps the pattern the same in
# Python's re, Go's RE2 and Rust's regex (the proxies Linkerd users know).
_META = re.compile(r"([\\.+*?()|\[\]{}^$])")
_SERVER_VAR = re.compile(r"\{([^{}]*)\}")


# --- reading ---------------------------------------------------------------------

def load_spec(data: bytes, *, source: str) -> dict[str, Any]:
    """Parse a spec (JSON or YAML) and check it is a valid Swagger 2.0 / OpenAPI 3.x document."""
    doc = parse_document(data, source=source)
    refs = _normalize_and_collect_refs(doc, source=source)
    if not isinstance(doc, dict):
        raise InputError(f"{source}: not an OpenAPI document (the top level is {_kind(doc)}, not an object)")
    version = _version(doc, source)
    _check_refs(doc, refs, source)
    _validate(doc, version, source)
    if not doc.get("paths"):
        raise InputError(f"{source}: the spec has no paths, so there are no routes to make")
    return doc


def _normalize_and_collect_refs(doc: Any, *, source: str) -> list[tuple[tuple, str]]:
    """Make YAML's integer keys strings (``200:``), bound the size, and list every ``$ref`` with where it is."""
    budget = MAX_NODES
    refs: list[tuple[tuple, str]] = []
    stack: list[tuple[Any, tuple, int]] = [(doc, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise InputError(f"{source}: more than {MAX_NODES} nodes (after expanding YAML aliases): too large")
        if depth > MAX_DEPTH:
            raise InputError(f"{source}: nested deeper than {MAX_DEPTH} levels at {_where(path)}")
        if isinstance(node, dict):
            if any(not isinstance(k, str) for k in node):
                fixed = {(k if isinstance(k, str) else _key_text(k)): v for k, v in node.items()}
                node.clear()
                node.update(fixed)
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.append((path, ref))
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, path + (k,), depth + 1))
                else:
                    budget -= 1
        elif isinstance(node, list):
            for i, v in enumerate(node):
                stack.append((v, path + (i,), depth + 1))
    return refs


def _key_text(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _version(doc: dict, source: str) -> str:
    swagger, openapi = doc.get("swagger"), doc.get("openapi")
    if swagger is not None:
        if str(swagger) != "2.0":
            raise InputError(f"{source}: swagger: {swagger!r} is not supported (Swagger 2.0, OpenAPI 3.0 and 3.1 are)")
        return "2.0"
    if isinstance(openapi, str) and re.fullmatch(r"3\.[01]\.\d+(-.+)?", openapi):
        return openapi[:3]
    if openapi is not None:
        raise InputError(f"{source}: openapi: {openapi!r} is not supported (Swagger 2.0, OpenAPI 3.0 and 3.1 are)")
    raise InputError(f"{source}: not an OpenAPI document (no 'swagger: \"2.0\"' or 'openapi: 3.x' field)")


def _check_refs(doc: dict, refs: list[tuple[tuple, str]], source: str) -> None:
    for path, ref in refs:
        if not ref.startswith("#"):
            raise InputError(f"{source}: {_where(path)}.$ref: {ref!r} points outside this file; "
                             "bundle the spec into one file first")
        seen = [ref]
        target = _pointer(doc, ref, source, path)
        while isinstance(target, dict) and isinstance(target.get("$ref"), str):
            nxt = target["$ref"]
            if nxt in seen:
                chain = " -> ".join([*seen, nxt])
                raise InputError(f"{source}: {_where(path)}.$ref: $ref cycle: {chain}")
            seen.append(nxt)
            if not nxt.startswith("#"):
                break  # reported when its own entry is checked
            target = _pointer(doc, nxt, source, path)


def _pointer(doc: Any, ref: str, source: str, where: tuple) -> Any:
    """Resolve a local JSON pointer (RFC 6901, in a URI fragment: percent-decoded first)."""
    node = doc
    pointer = unquote(ref[1:])
    if pointer and not pointer.startswith("/"):
        raise InputError(f"{source}: {_where(where)}.$ref: {ref!r} is not a JSON pointer")
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InputError(f"{source}: {_where(where)}.$ref: {ref!r} does not resolve (no {part!r})")
    return node


def _validate(doc: dict, version: str, source: str) -> None:
    import openapi_spec_validator as osv

    cls = {"2.0": osv.OpenAPIV2SpecValidator, "3.0": osv.OpenAPIV30SpecValidator,
           "3.1": osv.OpenAPIV31SpecValidator}[version]
    name = "Swagger 2.0" if version == "2.0" else f"OpenAPI {version}"
    try:
        error = next(iter(cls(doc).iter_errors()), None)
    except RecursionError:
        raise InputError(f"{source}: invalid {name} spec: references nest too deeply") from None
    except Exception as exc:  # the validator's own resolver failures (PointerToNowhere, ...)
        raise InputError(f"{source}: invalid {name} spec: {one_line(str(exc))}") from None
    if error is None:
        return
    path = tuple(getattr(error, "absolute_path", ()) or ())
    message = str(getattr(error, "message", error)).splitlines()[0]
    detail = _schema_detail(doc, version)
    if detail is not None:
        path, message = detail
    at = f" at {_where(path)}" if path else ""
    raise InputError(f"{source}: invalid {name} spec{at}: {one_line(message)}")


def _schema_detail(doc: dict, version: str) -> tuple[tuple, str] | None:
    """Where and what, from the pure-Python jsonschema backend's best match.

    The fast jsonschema-rs backend (used when installed: it halves validation
    time) reports "X is not valid under any of the schemas listed in the
    'oneOf' keyword"; jsonschema's best_match finds the sub-error that says
    what is missing.  Only run on a failure, so its cost does not matter.
    """
    try:
        from jsonschema.exceptions import best_match
        from openapi_spec_validator import schemas
        from openapi_spec_validator.schemas.backend.jsonschema import create_validator

        schema = {"2.0": schemas.schema_v2, "3.0": schemas.schema_v30, "3.1": schemas.schema_v31}[version]
        best = best_match(create_validator(schema).iter_errors(doc))
    except Exception:  # a change in the validator's internals: keep its own message
        return None
    if best is None:
        return None  # not a schema error (an unresolved parameter, a duplicate operationId, ...)
    while best.context:
        best = best_match(best.context)
    return tuple(best.absolute_path), best.message


# --- generating ------------------------------------------------------------------

def path_regex(template: str) -> str:
    """Escape regex metacharacters; each ``{param}`` matches one path segment (``[^/]*``)."""
    out, pos = [], 0
    for m in _PARAM.finditer(template):
        out.append(_META.sub(r"\\\1", template[pos:m.start()]))
        out.append("[^/]*")
        pos = m.end()
    out.append(_META.sub(r"\\\1", template[pos:]))
    return "".join(out)


def from_openapi(doc: dict[str, Any], *, name: str, namespace: str, source: str = "spec") -> ServiceProfile:
    """A ServiceProfile with one route per operation of a spec already checked by :func:`load_spec`."""
    swagger = "swagger" in doc
    root_base = _clean_base(doc.get("basePath", "")) if swagger else _servers_base(doc.get("servers"))
    routes: list[tuple[tuple[str, str], Route]] = []
    for raw_path, raw_item in doc["paths"].items():
        if raw_path.startswith("x-"):
            continue  # a Paths Object extension, not a path
        item = _deref(doc, raw_item, source, ("paths", raw_path))
        if not isinstance(item, dict):
            continue
        item_base = root_base if swagger or "servers" not in item else _servers_base(item["servers"])
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            where = ("paths", raw_path, method)
            base = item_base if swagger or "servers" not in op else _servers_base(op["servers"])
            full = _join(base, raw_path)
            retryable, timeout = _extensions(op, source, where)
            routes.append(((full, method.upper()), Route(
                name=f"{method.upper()} {full}",
                condition=RequestMatch(method=method.upper(), path_regex=path_regex(full)),
                response_classes=_response_classes(doc, op, source, where),
                is_retryable=retryable,
                timeout=timeout,
            )))
    if not routes:
        raise InputError(f"{source}: the spec has no operations, so there are no routes to make")
    routes.sort(key=lambda pair: pair[0])
    return ServiceProfile(name=name, namespace=namespace, routes=tuple(r for _, r in routes))


def _deref(doc: dict, node: Any, source: str, where: tuple) -> Any:
    # Cycles were rejected by _check_refs, so this chain ends.
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        node = _pointer(doc, node["$ref"], source, where)
    return node


def _response_classes(doc: dict, op: dict, source: str, where: tuple) -> tuple[ResponseClass, ...]:
    codes = []
    for key, response in (op.get("responses") or {}).items():
        if _STATUS.fullmatch(str(key)):
            _deref(doc, response, source, (*where, "responses", key))
            codes.append(int(key))
    return tuple(
        ResponseClass(ResponseMatch(status=StatusRange(min=code, max=code)), is_failure=code >= 500)
        for code in sorted(set(codes))
    )


def _extensions(op: dict, source: str, where: tuple) -> tuple[bool, str | None]:
    retryable, timeout = False, None
    # Linkerd's names first, so that meshctl's override them.
    for vendor in ("linkerd", "meshctl"):
        key = f"x-{vendor}-retryable"
        if key in op:
            if not isinstance(op[key], bool):
                raise InputError(f"{source}: {_where((*where, key))}: expected true or false, got {op[key]!r}")
            retryable = op[key]
        key = f"x-{vendor}-timeout"
        if key in op:
            value = op[key]
            try:
                if not isinstance(value, str) or parse_duration(value) <= 0:
                    raise ValueError(f"expected a duration greater than 0 like 100ms or 10s, got {value!r}")
            except ValueError as exc:
                raise InputError(f"{source}: {_where((*where, key))}: {exc}") from None
            timeout = value
    return retryable, timeout


def _servers_base(servers: Any) -> str:
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        return ""  # OpenAPI 3: no servers means "/"
    server = servers[0]
    variables = server.get("variables") or {}

    def default(m: re.Match) -> str:
        var = variables.get(m.group(1))
        return str(var.get("default", "")) if isinstance(var, dict) else m.group(0)

    url = _SERVER_VAR.sub(default, str(server.get("url", "")))
    return _clean_base(urlsplit(url).path)


def _clean_base(base: Any) -> str:
    # A relative server URL ("v1") is relative to where the spec is served;
    # for a route it can only mean a path from the root.
    base = str(base or "").rstrip("/")
    return base if not base or base.startswith("/") else "/" + base


def _join(base: str, path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    return (base + path) if base else path


# --- messages --------------------------------------------------------------------

def _where(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)
