"""Structural templates: YAML documents whose string scalars name values.

A template is parsed first and filled in afterwards, so a value can never
break the YAML around it (a PEM block, a quote, a colon): Helm's textual
templates need ``| nindent`` and ``| quote`` for that, these do not.

- a scalar that is exactly ``"{{ path }}"`` is replaced by the value at
  *path* (any type: a mapping, a list, a number); a ``None`` value removes the
  key (or list item), which is how optional blocks (``affinity``) disappear;
- a scalar containing ``{{ path }}`` among other text gets the value's text.

Paths are dotted (``labels.proxy-injector``).  An unknown path is a bug in the
template, reported with the template's name.
"""

from __future__ import annotations

import re

import yaml

_WHOLE = re.compile(r"^\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}$")
_PART = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
_DROP = object()


class TemplateError(ValueError):
    pass


def lookup(context: dict, path: str, *, source: str):
    cur = context
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise TemplateError(f"{source}: unknown value {path!r}")
        cur = cur[key]
    return cur


def _fill(node, context: dict, source: str):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            filled = _fill(value, context, source)
            if filled is not _DROP:
                out[key] = filled
        return out
    if isinstance(node, list):
        return [v for v in (_fill(i, context, source) for i in node) if v is not _DROP]
    if isinstance(node, str):
        if m := _WHOLE.match(node):
            value = lookup(context, m.group(1), source=source)
            return _DROP if value is None else value
        if "{{" in node:
            return _PART.sub(lambda m: str(lookup(context, m.group(1), source=source)), node)
    return node


def render(text: str, context: dict, *, source: str) -> list[dict]:
    """The documents of *text* with every placeholder filled from *context*."""
    return [_fill(doc, context, source) for doc in yaml.safe_load_all(text) if doc is not None]
