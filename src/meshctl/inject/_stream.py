"""Streams of manifests: decide per object with the pod-level core, then edit the text.

The decision is made on plain values (:func:`meshctl.yamlstream.Document.value`);
the change is carried out on the text with :class:`meshctl.yamlstream.Editor`,
so everything the patch does not touch stays byte for byte.  A document with
both removals (a re-inject) and additions is edited in two passes, composing
the intermediate text again, so each pass addresses fresh node positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from meshctl import yamlstream
from meshctl.errors import InputError
from meshctl.inject._objects import Outcome, inject_object, is_list, uninject_object
from meshctl.inject._options import InjectOptions
from meshctl.inject._patch import InsertItems, Path, SetEntries
from meshctl.inject._pod import InjectError


@dataclasses.dataclass(frozen=True, slots=True)
class StreamResult:
    text: str  # the output (YAML as written, or as asked with output="yaml"/"json")
    outcomes: tuple[Outcome, ...]

    @property
    def refused(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.verdict == "refused")


def inject_text(text: str, source: str, options: InjectOptions, *, output: str | None = None,
                verify: bool = False) -> StreamResult:
    """Inject every object of a YAML/JSON stream.  *output*: None (as written), "yaml" or "json"."""
    return _process(text, source, lambda obj: inject_object(obj, options), output, verify)


def uninject_text(text: str, source: str, *, output: str | None = None, verify: bool = False) -> StreamResult:
    return _process(text, source, uninject_object, output, verify)


def apply_outcome(obj: dict, outcome: Outcome) -> dict:
    """*obj* with the outcome's patch applied at its target (a new object; *obj* is untouched)."""
    if not outcome.patch:
        return obj
    if not outcome.target:
        return outcome.patch.apply(obj)
    new = dict(obj)
    cur = new
    for key in outcome.target[:-1]:
        cur[key] = dict(cur[key])
        cur = cur[key]
    cur[outcome.target[-1]] = outcome.patch.apply(cur[outcome.target[-1]])
    return new


def _objects(value: Any, doc: yamlstream.Document) -> list[tuple[dict, Path]]:
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"{value!r}"
        raise doc.error(f"expected a Kubernetes object (a mapping with apiVersion and kind), got {kind}", doc.node)
    if is_list(value):
        return [(item, ("items", i)) for i, item in enumerate(value["items"]) if isinstance(item, dict)]
    return [(value, ())]


@contextlib.contextmanager
def _gc_paused():
    # Composing builds large acyclic graphs of nodes and values (one `kind: List` of
    # 2,000 Deployments is a single document): the cyclic collector would rescan them
    # again and again (3.3 s instead of 1.1 s for that List) while reference counting
    # frees them anyway.  Cycles (recursive aliases) are collected once it resumes.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _process(text: str, source: str, decide: Callable[[dict], Outcome], output: str | None,
             verify: bool) -> StreamResult:
    with _gc_paused():
        return _process_documents(text, source, decide, output, verify)


def _process_documents(text: str, source: str, decide: Callable[[dict], Outcome], output: str | None,
                       verify: bool) -> StreamResult:
    pieces: list[str] = []
    outcomes: list[Outcome] = []
    converted = 0
    for doc in yamlstream.documents(text, source):
        value = doc.value()
        if value is None:
            if output is None or (output == "yaml" and not doc.json):
                pieces.append(doc.text)
            continue
        decided = []
        for obj, path in _objects(value, doc):
            try:
                outcome = decide(obj)
            except InjectError as exc:
                raise InputError(f"{doc.where()}: {exc}") from None
            if not outcome.kind:
                where = doc.where() + (f", item {path[1] + 1}" if path else "")
                outcome = dataclasses.replace(outcome, where=where)
            decided.append((outcome, path))
        outcomes += [o for o, _ in decided]
        if output is None or (output == "yaml" and not doc.json):
            edited = _edit(doc, decided)
            if verify:
                _verify(doc, edited, value, decided)
            pieces.append(edited)
            continue
        new = _apply_all(value, decided)
        if output == "json":
            pieces.append(yamlstream.dump_json(new))
        else:
            pieces.append(("---\n" if converted else "") + yamlstream.dump_yaml(new))
            converted += 1
    return StreamResult("".join(pieces), tuple(outcomes))


def _apply_all(value: dict, decided: list[tuple[Outcome, Path]]) -> dict:
    if decided and decided[0][1] == ():
        return apply_outcome(value, decided[0][0])
    items = list(value["items"])
    for outcome, path in decided:
        items[path[1]] = apply_outcome(items[path[1]], outcome)
    return {**value, "items": items}


def _node_at(node: Node, path: Path, doc: yamlstream.Document) -> MappingNode:
    for key in path:
        if node.__class__ is SequenceNode:
            node = node.value[key]
        else:
            found = yamlstream.lookup(node, key)
            if found is None:  # pragma: no cover - the decision saw it in the value
                raise doc.error(f"{'.'.join(map(str, path))} not found", node)
            node = found[1]
    if node.__class__ is not MappingNode:  # pragma: no cover - idem
        raise doc.error(f"{'.'.join(map(str, path))} is not a mapping", node)
    return node


def _edit(doc: yamlstream.Document, decided: list[tuple[Outcome, Path]]) -> str:
    todo = [(o, path + o.target) for o, path in decided if o.patch]
    if not todo:
        return doc.text
    additions = any(o.patch.additions for o, _ in todo)
    try:
        if any(o.patch.removals for o, _ in todo):
            editor = yamlstream.Editor(doc)
            for outcome, path in todo:
                target = _node_at(doc.node, path, doc)
                for op in outcome.patch.removals:
                    editor.delete(target, op.path)
            if not additions:
                return editor.result()
            doc = doc.recompose(editor.result())
        if additions:
            editor = yamlstream.Editor(doc)
            for outcome, path in todo:
                target = _node_at(doc.node, path, doc)
                for op in outcome.patch.additions:
                    if isinstance(op, SetEntries):
                        editor.set_entries(target, op.path, dict(op.entries))
                    elif isinstance(op, InsertItems):
                        editor.insert_items(target, op.path, op.index, list(op.items))
            return editor.result()
        return doc.text
    except yamlstream.EditError as exc:
        raise doc.error(f"cannot edit in place: {exc}", exc.node) from None


def _verify(doc: yamlstream.Document, edited: str, value: Any, decided: list[tuple[Outcome, Path]]) -> None:
    """Self-check (tests): the edited text must read back as the patch applied to the values."""
    expected = _apply_all(value, decided)
    got = doc.recompose(edited).value()
    if got != expected:
        raise AssertionError(f"{doc.where()}: text edit disagrees with the patch\n--- text:\n{edited}")
