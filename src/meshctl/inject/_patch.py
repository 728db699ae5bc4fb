"""What inject/uninject change in a pod template, as data.

A :class:`PodPatch` is a list of removals (paths into the original template)
followed by additions (applied to the template after the removals).  Three
renderers share it: :meth:`PodPatch.apply` (plain dicts: ``-o json``, tests),
:meth:`PodPatch.json_patch` (RFC 6902, for the admission webhook) and the text
editor in :mod:`meshctl.inject._stream` (surgical edits of the user's YAML).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, Union

Path = tuple[Union[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Remove:
    """Delete the mapping entry or list item at *path* (indices refer to the original list)."""

    path: Path


@dataclasses.dataclass(frozen=True, slots=True)
class SetEntries:
    """Set *entries* in the mapping at *path*, creating the mappings on the way."""

    path: Path
    entries: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class InsertItems:
    """Insert *items* into the list at *path* at *index* (None: append), creating it if missing."""

    path: Path
    index: int | None
    items: tuple


Addition = Union[SetEntries, InsertItems]


@dataclasses.dataclass(frozen=True, slots=True)
class PodPatch:
    removals: tuple[Remove, ...] = ()
    additions: tuple[Addition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.removals or self.additions)

    def apply(self, target: dict) -> dict:
        """A new dict with the patch applied; *target* is left untouched (it may share nodes via YAML aliases)."""
        out = copy.deepcopy(target)
        # Remove list items from the highest index down so earlier indices stay valid.
        for op in sorted(self.removals, key=_removal_order):
            parent = _walk(out, op.path[:-1])
            del parent[op.path[-1]]
        for op in self.additions:
            if isinstance(op, SetEntries):
                _ensure(out, op.path, dict).update(copy.deepcopy(dict(op.entries)))
            else:
                lst = _ensure(out, op.path, list)
                at = len(lst) if op.index is None else op.index
                lst[at:at] = copy.deepcopy(list(op.items))
        return out

    def json_patch(self, target: dict, prefix: str = "") -> list[dict]:
        """RFC 6902 operations that turn *target* into ``self.apply(target)``.

        *prefix* is the JSON pointer of the target inside the object under
        review (``""`` for a Pod, ``"/spec/template"`` for a Deployment).
        """
        ops: list[dict] = []
        current = copy.deepcopy(target)
        for op in sorted(self.removals, key=_removal_order):
            ops.append({"op": "remove", "path": prefix + pointer(op.path)})
            del _walk(current, op.path[:-1])[op.path[-1]]
        for op in self.additions:
            missing = _first_missing(current, op.path)
            if missing is not None:
                value: Any = dict(op.entries) if isinstance(op, SetEntries) else list(op.items)
                for key in reversed(op.path[missing + 1:]):
                    value = {key: value}
                path = op.path[: missing + 1]
                ops.append({"op": "add", "path": prefix + pointer(path), "value": copy.deepcopy(value)})
            elif isinstance(op, SetEntries):
                for key, value in op.entries.items():
                    ops.append({"op": "add", "path": prefix + pointer(op.path + (key,)), "value": copy.deepcopy(value)})
            else:
                at = len(_walk(current, op.path)) if op.index is None else op.index
                for i, item in enumerate(op.items):
                    ops.append({"op": "add", "path": prefix + pointer(op.path + ((at + i) if op.index is not None else "-",)),
                                "value": copy.deepcopy(item)})
            current = PodPatch(additions=(op,)).apply(current)
        return ops


def pointer(path: Path) -> str:
    """A JSON pointer (RFC 6901): ``~`` and ``/`` in keys escaped, as annotation keys need."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _removal_order(op: Remove):
    last = op.path[-1]
    return (op.path[:-1] and tuple(map(str, op.path[:-1])), -last if isinstance(last, int) else 0, str(last))


def _walk(obj: Any, path: Path) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _ensure(obj: dict, path: Path, leaf: type) -> Any:
    for i, key in enumerate(path):
        kind = leaf if i == len(path) - 1 else dict
        if obj.get(key) is None:
            obj[key] = kind()
        obj = obj[key]
    return obj


def _first_missing(obj: Any, path: Path) -> int | None:
    for i, key in enumerate(path):
        if not isinstance(obj, dict) or obj.get(key) is None:
            return i
        obj = obj[key]
    return None
