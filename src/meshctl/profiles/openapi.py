"""ServiceProfiles from Swagger 2.0 and OpenAPI 3.0/3.1 specs.

The rules (docs/profiles.md):

- the spec is validated with openapi-spec-validator (imported here, lazily: it
  costs about 0.25 s), after our own checks of every ``$ref`` (the validator
  recurses forever on cycles, and would fetch remote ones).  Every problem is
  reported at once (:class:`SpecError`); a caller that passes ``problems=[]``
  gets them as a list and generates anyway (``meshctl profile --ignore-spec-errors``);
- accepted as linkerd accepts them (it reads only what routes need): a spec
  without ``info``, operations without ``responses`` (as in Linkerd's own
  tests), and ``$ref``s to other files where route generation does not follow
  them (schemas, responses); a path item that is an external ``$ref`` is a
  problem, since its operations cannot be read;
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


class SpecError(InputError):
    """Every problem found in a spec, one line each (the first line says how many)."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = tuple(problems)
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{source}: {len(problems)} problems with the spec:\n  " + "\n  ".join(problems))


# --- reading ---------------------------------------------------------------------

def load_spec(data: bytes, *, source: str, problems: list[str] | None = None) -> dict[str, Any]:
    """Parse a spec (JSON or YAML) and check it is a valid Swagger 2.0 / OpenAPI 3.x document.

    Problems that do not stop route generation (an invalid schema, a dangling ``$ref``)
    raise one :class:`SpecError` naming them all, or, when *problems* is a list, are
    appended to it and the spec is returned.  What no route can come from (not a spec,
    no paths) always raises.
    """
    doc = parse_document(data, source=source)
    refs = _normalize_and_collect_refs(doc, source=source)
    if not isinstance(doc, dict):
        raise InputError(f"{source}: not an OpenAPI document (the top level is {_kind(doc)}, not an object)")
    version = _version(doc, source)
    if not doc.get("paths"):
        raise InputError(f"{source}: the spec has no paths, so there are no routes to make")
    found: list[str] = []
    unusable = _ref_problems(doc, refs, source, found)
    found += _validate(doc, version, source, unusable)
    if problems is None:
        if found:
            raise SpecError(source, found)
    else:
        problems += found
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


def _ref_problems(doc: dict, refs: list[tuple[tuple, str]], source: str, found: list[str]) -> list[tuple]:
    """Check every ``$ref``; return where the unusable ones are (the validator must not follow them).

    A ``$ref`` to another file is tolerated where routes do not need it (linkerd never
    reads it); one that makes a path item is a problem.  Dangling and cyclic local
    references are problems wherever they are.
    """
    unusable = []
    cycles: set[frozenset] = set()  # a cycle is reported once, not once per member
    for path, ref in refs:
        if not ref.startswith("#"):
            unusable.append(path)
            if len(path) == 2 and path[0] == "paths":
                found.append(f"{source}: {_where(path)}.$ref: {ref!r} points outside this file, so the "
                             "operations of this path cannot be read; bundle the spec into one file first")
            continue
        seen = [ref]
        try:
            target = _pointer(doc, ref, source, path)
            while isinstance(target, dict) and isinstance(target.get("$ref"), str):
                nxt = target["$ref"]
                if nxt in seen:
                    unusable.append(path)
                    members = frozenset(seen[seen.index(nxt):])
                    if members not in cycles:
                        cycles.add(members)
                        chain = " -> ".join([*seen, nxt])
                        found.append(f"{source}: {_where(path)}.$ref: $ref cycle: {chain}")
                    break
                seen.append(nxt)
                if not nxt.startswith("#"):
                    break  # judged when its own entry is checked
                target = _pointer(doc, nxt, source, path)
        except InputError as exc:
            unusable.append(path)
            found.append(str(exc))
    return unusable


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


def _validate(doc: dict, version: str, source: str, unusable: list[tuple]) -> list[str]:
    """Every problem openapi-spec-validator finds, as linkerd-compatible as the routes allow.

    Validated is a copy in which what linkerd does not require is filled in (``info``, an
    operation's ``responses``) and the unusable ``$ref``s are emptied; errors under those
    are not reported again.
    """
    import copy

    import openapi_spec_validator as osv

    cls = {"2.0": osv.OpenAPIV2SpecValidator, "3.0": osv.OpenAPIV30SpecValidator,
           "3.1": osv.OpenAPIV31SpecValidator}[version]
    name = "Swagger 2.0" if version == "2.0" else f"OpenAPI {version}"
    checked = _linkerd_lenient(copy.deepcopy(doc), unusable)
    try:
        errors = list(cls(checked).iter_errors())
    except RecursionError:
        return [f"{source}: invalid {name} spec: references nest too deeply"]
    except Exception as exc:  # the validator's own failures (PointerToNowhere, a KeyError on a bad node, ...)
        return [f"{source}: invalid {name} spec: the validator failed ({type(exc).__name__}: {one_line(str(exc))})"]
    if not errors:
        return []
    details = _schema_details(checked, version)
    found = details if details else [(tuple(getattr(e, "absolute_path", ()) or ()),
                                       str(getattr(e, "message", e)).splitlines()[0]) for e in errors]
    out = []
    for path, message in found:
        if any(path[:len(u)] == u for u in unusable):
            continue
        at = f" at {_where(path)}" if path else ""
        line = f"{source}: invalid {name} spec{at}: {one_line(message)}"
        if line not in out:
            out.append(line)
    return out


def _linkerd_lenient(doc: dict, unusable: list[tuple]) -> dict:
    """*doc* with what linkerd does not ask for filled in, and the unusable ``$ref``s emptied."""
    doc.setdefault("info", {"title": "", "version": ""})
    for item in (doc.get("paths") or {}).values():
        if isinstance(item, dict):
            for method in METHODS:
                if isinstance(item.get(method), dict):
                    item[method].setdefault("responses", {"default": {"description": ""}})
    # Deepest first, and list items from the end, so that removals keep the other paths valid.
    for path in sorted(unusable, key=lambda p: (len(p), p[-1] if isinstance(p[-1], int) else -1), reverse=True):
        node = doc
        for key in path[:-1]:
            node = node[key]
        if isinstance(node, list):
            del node[path[-1]]  # a parameter from another file: its fields are unknown, leave it out
        elif len(path) >= 2 and path[-2] == "responses":
            node[path[-1]] = {"description": ""}  # a Response needs one; a status code is all routes use
        else:
            node[path[-1]] = {}  # a schema, or anything else: the empty object
    return doc


def _schema_details(doc: dict, version: str) -> list[tuple[tuple, str]]:
    """Where and what, for every schema error, from the pure-Python jsonschema backend.

    The fast jsonschema-rs backend (used when installed: it halves validation
    time) reports "X is not valid under any of the schemas listed in the
    'oneOf' keyword"; jsonschema's best_match finds the sub-error that says
    what is missing.  Only run on a failure, so its cost does not matter.
    An empty list: not schema errors (an unresolved parameter, a duplicate operationId, ...).
    """
    try:
        from jsonschema.exceptions import best_match
        from openapi_spec_validator import schemas
        from openapi_spec_validator.schemas.backend.jsonschema import create_validator

        schema = {"2.0": schemas.schema_v2, "3.0": schemas.schema_v30, "3.1": schemas.schema_v31}[version]
        out = []
        for error in create_validator(schema).iter_errors(doc):
            while error.context:
                error = best_match(error.context)
            out.append((tuple(error.absolute_path), error.message))
        return out
    except Exception:  # a change in the validator's internals: keep its own messages
        return []


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


def from_openapi(doc: dict[str, Any], *, name: str, namespace: str, source: str = "spec",
                 problems: list[str] | None = None) -> ServiceProfile:
    """A ServiceProfile with one route per operation of a spec already read by :func:`load_spec`.

    A path or an extension that cannot be used raises a :class:`SpecError` naming every
    such problem, or, when *problems* is a list, is appended to it and left out.
    """
    found: list[str] = []
    profile = _routes(doc, name=name, namespace=namespace, source=source, found=found)
    if not profile.routes:
        # Nothing to generate, whatever the flag: say so after the problems that may be why.
        pending = [*(problems or []), *found]
        message = f"{source}: the spec has no operations, so there are no routes to make"
        raise SpecError(source, [*pending, message]) if pending else InputError(message)
    if problems is None and found:
        raise SpecError(source, found)
    if problems is not None:
        problems += found
    return profile


def _routes(doc: dict[str, Any], *, name: str, namespace: str, source: str, found: list[str]) -> ServiceProfile:
    swagger = "swagger" in doc
    root_base = _clean_base(doc.get("basePath", "")) if swagger else _servers_base(doc.get("servers"))
    routes: list[tuple[tuple[str, str], Route]] = []
    for raw_path, raw_item in doc["paths"].items():
        if raw_path.startswith("x-"):
            continue  # a Paths Object extension, not a path
        try:
            item = _deref(doc, raw_item, source, ("paths", raw_path))
        except InputError:
            continue  # an unusable $ref: reported by load_spec
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
            retryable, timeout = _extensions(op, source, where, found)
            routes.append(((full, method.upper()), Route(
                name=f"{method.upper()} {full}",
                condition=RequestMatch(method=method.upper(), path_regex=path_regex(full)),
                response_classes=_response_classes(op),
                is_retryable=retryable,
                timeout=timeout,
            )))
    routes.sort(key=lambda pair: pair[0])
    return ServiceProfile(name=name, namespace=namespace, routes=tuple(r for _, r in routes))


def _deref(doc: dict, node: Any, source: str, where: tuple) -> Any:
    seen = set()
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in seen or not ref.startswith("#"):
            raise InputError(f"{source}: {_where(where)}.$ref: {ref!r} cannot be followed")  # reported by load_spec
        seen.add(ref)
        node = _pointer(doc, ref, source, where)
    return node


def _response_classes(op: dict) -> tuple[ResponseClass, ...]:
    # Only the status codes matter: what a response $ref points to is never needed.
    codes = []
    responses = op.get("responses")
    for key in (responses if isinstance(responses, dict) else {}):
        if _STATUS.fullmatch(str(key)):
            codes.append(int(key))
    return tuple(
        ResponseClass(ResponseMatch(status=StatusRange(min=code, max=code)), is_failure=code >= 500)
        for code in sorted(set(codes))
    )


def _extensions(op: dict, source: str, where: tuple, found: list[str]) -> tuple[bool, str | None]:
    """The route's retryable flag and timeout; a bad value is a problem, and left out."""
    retryable, timeout = False, None
    # Linkerd's names first, so that meshctl's override them.
    for vendor in ("linkerd", "meshctl"):
        key = f"x-{vendor}-retryable"
        if key in op:
            if not isinstance(op[key], bool):
                found.append(f"{source}: {_where((*where, key))}: expected true or false, got {op[key]!r}")
            else:
                retryable = op[key]
        key = f"x-{vendor}-timeout"
        if key in op:
            value = op[key]
            try:
                if not isinstance(value, str) or parse_duration(value) <= 0:
                    raise ValueError(f"expected a duration greater than 0 like 100ms or 10s, got {value!r}")
                timeout = value
            except ValueError as exc:
                found.append(f"{source}: {_where((*where, key))}: {exc}")
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
