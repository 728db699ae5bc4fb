"""Patch semantics the API server applies: JSON merge patch (RFC 7386), JSON
patch (RFC 6902) and strategic merge patch.

Strategic merge is approximated: lists whose items all carry a ``name`` (as
containers, ports, env and volumes do, the ``patchMergeKey`` of most
Kubernetes lists) are merged by name; other lists are replaced, like a merge
patch.  ``$patch`` directives are not supported (docs/kubernetes.md).
"""

from __future__ import annotations

import copy


class PatchError(ValueError):
    pass


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named_list(value) -> bool:
    return isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i for i in value)


def strategic_merge_patch(target, patch):
    if isinstance(patch, list) and _named_list(patch) and _named_list(target):
        by_name = {item["name"]: item for item in target}
        order = [item["name"] for item in target]
        for item in patch:
            if item["name"] in by_name:
                by_name[item["name"]] = strategic_merge_patch(by_name[item["name"]], item)
            else:
                by_name[item["name"]] = copy.deepcopy(item)
                order.append(item["name"])
        return [by_name[n] for n in order]
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise PatchError(f"unsupported strategic merge directive {key}")
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, parts):
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise PatchError(f"path element {p!r} not found") from None
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            raise PatchError(f"path element {p!r} not found")
    return cur


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            sp = _parent(doc, src)
            value = sp[int(src[-1])] if isinstance(sp, list) else sp[src[-1]]
            if kind == "move":
                del sp[int(src[-1]) if isinstance(sp, list) else src[-1]]
            op = {"op": "add", "path": op["path"], "value": copy.deepcopy(value)}
            kind = "add"
        if not parts:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
                continue
            raise PatchError(f"cannot {kind} the whole document")
        parent, last = _parent(doc, parts), parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if idx > len(parent):
                    raise PatchError(f"index {idx} out of range")
                parent.insert(idx, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace", "test"):
            try:
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
            except (KeyError, IndexError, ValueError):
                raise PatchError(f"{kind}: path {op['path']!r} not found") from None
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "replace":
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
            elif current != op.get("value"):
                raise PatchError(f"test failed at {op['path']!r}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc
