"""Text in and out for profiles: bounded YAML/JSON parsing, and YAML/JSON rendering.

PyYAML's libyaml loader, not ruamel.yaml's round trip: nothing here needs
comments preserved, and libyaml is about twenty times faster.  Output is
written by a small emitter (a 2,000-route profile must render in well under
the 2 s budget, see docs/performance.md).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

from meshctl.errors import InputError

# Limits on input, so that a hostile or mistaken file fails fast instead of
# eating the machine.  The benchmark's 2,000-operation spec is 0.7 MiB of JSON
# and 40,000 nodes; large public specs run to several MiB.  At the node limit
# (24,000 operations, 8.6 MiB) a run takes 38 s of CPU and 270 MB, nearly all
# in openapi-spec-validator, which grows faster than linearly (its operationId
# check scans a list); bigger specs are refused rather than left to run on.
MAX_INPUT_BYTES = 32 * 1024 * 1024
# Nodes after YAML aliases are expanded: also bounds "billion laughs" documents.
MAX_NODES = 500_000
MAX_DEPTH = 200


def read_limited(stream, *, source: str) -> bytes:
    """Read at most MAX_INPUT_BYTES (+1 to notice more) from a binary stream."""
    data = stream.read(MAX_INPUT_BYTES + 1)
    check_size(data, source=source)
    return data


def check_size(data: bytes, *, source: str) -> None:
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{source}: more than the {MAX_INPUT_BYTES // 2**20} MiB input limit")


def decode_text(data: bytes, *, source: str) -> str:
    check_size(data, source=source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise InputError(f"{source}: empty input")
    return text


def parse_document(data: bytes, *, source: str) -> Any:
    """One JSON or YAML document."""
    text = decode_text(data, source=source)
    try:
        if text.lstrip().startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{source}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        import yaml

        with _yaml_errors(source):
            return yaml.load(text, Loader=spec_loader())  # noqa: S506 - a safe loader
    except RecursionError:
        raise InputError(f"{source}: nested too deeply") from None


def parse_documents(data: bytes, *, source: str) -> Iterator[tuple[int, Any]]:
    """Every document of a YAML stream (JSON is one YAML document), numbered from 1; empty ones skipped."""
    import yaml

    text = decode_text(data, source=source)
    with _yaml_errors(source):
        for number, doc in enumerate(yaml.load_all(text, Loader=spec_loader()), start=1):  # noqa: S506
            if doc is not None:
                yield number, doc


class _yaml_errors:
    """Turn PyYAML's multi-line errors into one line naming the source, line and column."""

    def __init__(self, source: str):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        import yaml

        if exc is None or not isinstance(exc, yaml.YAMLError):
            return False
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
        raise InputError(f"{self.source}: not valid YAML or JSON: {where}{one_line(what)}") from None


@functools.cache
def spec_loader():
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it

    class SpecLoader(base):  # type: ignore[misc, valid-type]
        """Safe loading, minus YAML 1.1 timestamps: ``example: 2024-01-01`` stays a string, as in JSON."""

    SpecLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    return SpecLoader


def dump(obj: Any, fmt: str = "yaml") -> str:
    """Kubernetes-style YAML (block style, keys in the order given) or indented JSON."""
    if fmt == "json":
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    out: list[str] = []
    _emit(obj, 0, out)
    return "".join(out)


# A careful emitter for the plain data a profile is made of (dicts, lists,
# strings, numbers, booleans).  On a 2,000-route profile PyYAML's representer
# spends 0.3 s, ruamel.yaml 2 s, this 0.04 s.  Strings are written plain when
# they cannot be read back as anything else, else double-quoted.
# tests/test_profile_openapi.py checks the round trip against PyYAML on
# arbitrary data.
_PLAIN = re.compile(r"[A-Za-z_/][-A-Za-z0-9_ ./{}\[\]^*+?()|$\\]*")
# Go durations (10s, 1m30s) start with a digit but read back as strings.
_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+")
# YAML 1.1 words that read back as booleans or null (PyYAML and kubectl's
# go-yaml both honour some of them).
_RESERVED = frozenset(w for word in ("y", "yes", "n", "no", "true", "false", "on", "off", "null", "~")
                      for w in (word, word.capitalize(), word.upper()))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        if (_PLAIN.fullmatch(value) and value not in _RESERVED and not value.endswith(" ")
                and " #" not in value) or _DURATION.fullmatch(value):
            return value
        return _quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # YAML 1.1 (PyYAML, go-yaml v2) needs a dot in a float: 1e-05 would read back as a string.
        number = repr(value)
        if "e" in number and "." not in number:
            number = number.replace("e", ".0e")
        return number
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


_ESCAPES = {"\"": "\\\"", "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(value: str) -> str:
    """A YAML double-quoted scalar; characters YAML may not carry raw (YAML 1.2 section 5.1) are escaped."""
    out = ['"']
    for ch in value:
        c = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= c <= 0x7E or 0xA0 <= c <= 0xD7FF or (0xE000 <= c <= 0xFFFD and c != 0xFEFF) or c >= 0x10000:
            out.append(ch)
        elif c <= 0xFF:
            out.append(f"\\x{c:02x}")
        else:
            out.append(f"\\u{c:04x}")
    out.append('"')
    return "".join(out)


def _emit(node: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(node, dict):
        if not node:
            out.append(pad + "{}\n")
        for key, value in node.items():
            _emit_entry(pad + _scalar(str(key)) + ":", value, indent, out, nested=indent + 2)
    elif isinstance(node, list):
        if not node:
            out.append(pad + "[]\n")
        for item in node:
            if isinstance(item, dict) and item:
                # "- key: value" then the other keys aligned under the first.
                first = True
                for key, value in item.items():
                    lead = (pad + "- ") if first else (pad + "  ")
                    _emit_entry(lead + _scalar(str(key)) + ":", value, indent + 2, out, nested=indent + 4)
                    first = False
            else:
                # A list in a list must be indented under its dash.
                _emit_entry(pad + "-", item, indent + 2, out, nested=indent + 2)
    else:
        out.append(pad + _scalar(node) + "\n")


def _emit_entry(lead: str, value: Any, indent: int, out: list[str], *, nested: int) -> None:
    if isinstance(value, dict) and value:
        out.append(lead + "\n")
        _emit(value, nested, out)
    elif isinstance(value, list) and value:
        out.append(lead + "\n")
        # Kubernetes style: a list under a key is not indented further.
        _emit(value, indent, out)
    else:
        text = "{}" if isinstance(value, dict) else "[]" if isinstance(value, list) else _scalar(value)
        out.append(lead + " " + text + "\n")


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
