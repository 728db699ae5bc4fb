"""Kubernetes YAML and JSON streams: read them safely, edit them surgically.

The one module for manifests as text.  Two halves:

Reading (:func:`documents`)
    A stream (multi-document YAML, or one or more JSON values) is split into
    documents at their ``---`` lines; each is composed with libyaml (PyYAML's C
    parser, which keeps node positions) and converted to plain Python values
    the way Kubernetes would read them (:func:`to_python`).  Every problem
    becomes one :class:`~meshctl.errors.InputError` line naming the source,
    the document number and the line: ``shop.yaml: document 3, line 19: ...``.

Writing (:class:`Editor`)
    Edits are made on the text itself, located by the composed nodes' marks:
    add entries to a mapping, insert items into a sequence, delete an entry or
    an item, each rendered at the indentation and in the style (block or flow,
    JSON or YAML) of its surroundings.  Everything not edited stays byte for
    byte, so comments, key order, quoting, block scalars and ``---``
    separators survive.  A ruamel.yaml round trip would preserve as much but
    parses at ~60 KiB/s; libyaml composes at several MiB/s
    (docs/performance.md).

Limits (bounded time and memory on hostile input):

- :data:`MAX_INPUT_BYTES` per source;
- :data:`MAX_DEPTH` nesting levels (checked before libyaml's recursive
  composer sees the text: it overflows the C stack near 100,000 levels);
- aliases that expand a document more than :data:`MAX_ALIAS_EXPANSION`-fold
  ("billion laughs");
- duplicate mapping keys are an error, as kubectl's strict decoding makes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshctl.errors import InputError

# A whole-cluster `kubectl get -A -o yaml` is tens of MiB at most (etcd caps one
# object at 1.5 MiB); 64 MiB leaves room and still bounds memory at a few hundred MiB.
MAX_INPUT_BYTES = 64 * 1024 * 1024
# Deeper than any Kubernetes object we know (CRD schemas reach ~60 levels), far
# below libyaml's composer stack overflow, and within Python's recursion limit.
MAX_DEPTH = 256
# go-yaml (which kubectl uses) refuses documents whose aliases expand them
# excessively; we allow an expansion of 10x the written nodes (plus slack).
MAX_ALIAS_EXPANSION = 10
ALIAS_SLACK_NODES = 10_000

_BaseLoader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
_RESOLVED: dict[str, str] = {}


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """libyaml's composer with a memo for implicit tags.

    libyaml calls back into Python's regex-based resolver for every scalar;
    manifests repeat the same few thousand plain scalars ("name", "TCP", "true"),
    so the memo halves the composer's time.  The safe loader has no path
    resolvers, so descending and ascending can be skipped.
    """

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = _BaseLoader.resolve(self, kind, value, implicit)
                if len(_RESOLVED) < 100_000 and len(value) < 256:
                    _RESOLVED[value] = tag
            return tag
        return _BaseLoader.resolve(self, kind, value, implicit)

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass


STR = "tag:yaml.org,2002:str"
NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
MERGE = "tag:yaml.org,2002:merge"

# Document boundaries: a `---` at column 0 always starts a document (libyaml agrees:
# block scalar content is indented and quoted scalars may not contain one), and
# directives (`%YAML`) right before it belong to it.
_DOC_START = re.compile(r"^(?:%[^\n]*\n)*---(?=[ \t\r\n]|\Z)", re.M)
# A cheap upper bound on nesting: flow openers plus the leading run of
# indentation and block indicators (each block level needs one more column).
_DEEP_LEAD = re.compile(r"^[ \t?:-]{%d,}" % (MAX_DEPTH // 4), re.M)


def read_text(data: bytes, source: str) -> str:
    """Decode one source (UTF-8, with or without BOM; UTF-16/32 with BOM), enforcing the size limit."""
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{source}: input larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            break
    else:
        codec = "utf-8"
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{source}: line {line}: not valid {codec.upper()} text") from None


# --- documents -------------------------------------------------------------------


@dataclasses.dataclass(slots=True, eq=False)
class Document:
    """One document of a stream: its own text (concatenating all documents' texts
    gives the stream back), its composed node and where it came from."""

    source: str
    number: int  # 1-based, as users count `---` sections
    text: str
    line0: int  # line number (0-based) of the text's start in the stream
    node: Node | None  # None: only comments or whitespace
    json: bool = False
    _value: Any = dataclasses.field(default=None, repr=False)
    _converted: bool = dataclasses.field(default=False, repr=False)

    def where(self, line: int | None = None) -> str:
        prefix = f"{self.source}: document {self.number}"
        return prefix if line is None else f"{prefix}, line {self.line0 + line + 1}"

    def error(self, message: str, node: Node | None = None, *, line: int | None = None) -> InputError:
        if node is not None:
            line = node.start_mark.line
        return InputError(f"{self.where(line)}: {message}")

    def value(self) -> Any:
        """The document as Kubernetes reads it (plain dicts, lists and scalars)."""
        if not self._converted:
            self._value = None if self.node is None else to_python(self.node, self)
            self._converted = True
        return self._value

    def recompose(self, text: str) -> "Document":
        """The same document after its text was edited."""
        return _compose(self.source, self.number, text, self.line0, json=self.json)


def documents(text: str, source: str) -> Iterator[Document]:
    """The documents of a YAML stream or of a sequence of JSON values, in order.

    Documents are composed lazily, one at a time, so memory follows the largest
    document rather than the stream.
    """
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"{source}: input larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            yield from _json_documents(text, source)
            return
        except _NotJSON:
            pass  # a YAML flow collection ("{a: b}"): read it as YAML
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(text))
    number, line0 = 0, 0
    for begin, end in zip(starts, starts[1:]):
        chunk = text[begin:end]
        doc = _compose(source, number + 1, chunk, line0)
        if doc.node is not None or begin > 0:
            number += 1
            yield doc
        elif chunk:
            # Comments before the first `---`: not a document, but kept in the output.
            doc.number = 0
            yield doc
        line0 += chunk.count("\n")


class _NotJSON(Exception):
    pass


def _json_documents(text: str, source: str) -> Iterator[Document]:
    decoder = json.JSONDecoder()
    pos, number, line0 = 0, 0, 0
    while pos < len(text):
        begin = pos
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            break
        number += 1
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if number == 1:
                raise _NotJSON() from None
            raise InputError(f"{source}: document {number}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            line = text.count("\n", 0, pos) + 1
            raise InputError(f"{source}: document {number}, line {line}: nesting deeper than {MAX_DEPTH} levels") from None
        # Trailing whitespace up to and including the newline belongs to this document.
        nl = text.find("\n", pos)
        if nl >= 0 and not text[pos:nl].strip():
            pos = nl + 1
        chunk = text[begin:pos]
        try:
            doc = _compose(source, number, chunk, line0, json=True)
        except InputError:
            # Valid JSON that libyaml refuses: raw DEL/C1 characters, or surrogate-pair
            # escapes of non-BMP characters.  Spell them the way both accept.
            doc = _compose(source, number, _yaml_safe_json(chunk), line0, json=True)
        yield doc
        line0 += chunk.count("\n")
    if pos < len(text):  # only whitespace left
        yield Document(source, number, text[pos:], line0, None, json=True, _converted=True)


_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.I)


def _yaml_safe_json(chunk: str) -> str:
    def pair(m: re.Match) -> str:
        return m.group(1) + (chr(int(m.group(2), 16)) + chr(int(m.group(3), 16))).encode(
            "utf-16", "surrogatepass").decode("utf-16")

    chunk = _SURROGATE_PAIR.sub(pair, chunk)
    return _NOT_PRINTABLE.sub(lambda m: "\\u%04x" % ord(m.group()), chunk)


def _compose(source: str, number: int, chunk: str, line0: int, *, json: bool = False) -> Document:
    doc = Document(source, number, chunk, line0, None, json=json)
    if json:
        _check_json_depth(doc)
    elif _flow_openers(chunk) > MAX_DEPTH // 2 or _DEEP_LEAD.search(chunk):
        _check_depth(doc)
    try:
        doc.node = yaml.compose(chunk, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(doc, exc) from None
    except yaml.YAMLError as exc:  # pragma: no cover - libyaml reader errors carry no mark
        raise doc.error(str(exc).splitlines()[0]) from None
    return doc


def _yaml_error(doc: Document, exc: yaml.MarkedYAMLError) -> InputError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and "while" not in exc.problem:
        problem = f"{exc.problem} ({exc.context})"
    return doc.error(problem, line=mark.line if mark else None)


def _flow_openers(chunk: str) -> int:
    # Empty "{}" and "[]" (all that kubectl writes in flow style) cannot nest
    # anything: only the other openers can make flow nesting deep.
    return chunk.count("{") - chunk.count("{}") + chunk.count("[") - chunk.count("[]")


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_json_depth(doc: Document) -> None:
    """Exact nesting of a valid JSON text: strings are skipped, brackets counted."""
    depth = 0
    for m in _JSON_TOKEN.finditer(doc.text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise doc.error(f"nesting deeper than {MAX_DEPTH} levels", line=doc.text.count("\n", 0, m.start()))
        elif c in "]}":
            depth -= 1


def _check_depth(doc: Document) -> None:
    """Precise nesting check with libyaml's event parser (iterative, so safe at any depth)."""
    depth = 0
    try:
        for event in yaml.parse(doc.text, Loader=_Loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise doc.error(f"nesting deeper than {MAX_DEPTH} levels", line=event.start_mark.line)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # PyYAML 6.0.4's libyaml refuses flow nesting past ~1000 levels while
        # scanning ahead, before our count reaches MAX_DEPTH: same verdict,
        # said the same way whichever libyaml the user has.
        if "maximum nesting depth" in (exc.problem or ""):
            mark = exc.problem_mark or exc.context_mark
            raise doc.error(f"nesting deeper than {MAX_DEPTH} levels", line=mark.line if mark else None) from None
        raise _yaml_error(doc, exc) from None


# --- values, as Kubernetes reads them ------------------------------------------------------
# Kubernetes decodes YAML with sigs.k8s.io/yaml, i.e. go-yaml v2's YAML 1.1 rules:
# yes/no/on/off and y/n are booleans, 0644 is octal, 0x1F hex; unlike PyYAML it
# has no sexagesimal numbers (1:30 stays a string).  Timestamps stay as written.

_BOOLS = {"true": True, "yes": True, "on": True, "y": True, "false": False, "no": False, "off": False, "n": False}
_GO_BOOL_ONLY = {"y", "Y", "n", "N"}


def _scalar(node: ScalarNode) -> Any:
    tag, value = node.tag, node.value
    if tag == STR:
        if value in _GO_BOOL_ONLY and not node.style:
            return _BOOLS[value.lower()]
        return value
    if tag == NULL:
        return None
    if tag == BOOL:
        return _BOOLS[value.lower()]
    if tag == INT:
        return _int(value)
    if tag == FLOAT:
        return _float(value)
    return value


def _int(text: str) -> int | str:
    v = text.replace("_", "")
    if ":" in v:
        return text
    sign = -1 if v.startswith("-") else 1
    v = v.lstrip("+-")
    if v.startswith("0b"):
        return sign * int(v[2:], 2)
    if v.startswith("0x"):
        return sign * int(v[2:], 16)
    if len(v) > 1 and v.startswith("0"):
        return sign * int(v, 8)
    return sign * int(v)


def _float(text: str) -> float | str:
    v = text.replace("_", "").lower()
    if ":" in v:
        return text
    if v.endswith(".inf"):
        return -math.inf if v.startswith("-") else math.inf
    if v == ".nan":
        return math.nan
    return float(v)


def _key_text(value: Any) -> str:
    # JSON keys are strings; go-yaml's YAMLToJSON formats others the same way.
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    return value if isinstance(value, str) else str(value)


def to_python(node: Node, doc: Document) -> Any:
    """Convert a composed node, rejecting duplicate keys, excessive depth and alias bombs."""
    memo: dict[int, Any] | None = {} if "&" in doc.text else None
    value = _convert(node, doc, 0, memo)
    if memo is not None and memo.get(-1):
        written = len(memo) - 1
        expanded = _expanded_size(node, {}, 0, doc)
        if expanded > MAX_ALIAS_EXPANSION * written + ALIAS_SLACK_NODES:
            raise doc.error(f"aliases expand the document to {expanded} nodes from {written} written "
                            "(excessive aliasing, as in a 'billion laughs' attack)", node)
    return value


def _convert(node: Node, doc: Document, depth: int, memo: dict[int, Any] | None) -> Any:
    if depth > MAX_DEPTH:
        raise doc.error(f"nesting deeper than {MAX_DEPTH} levels", node)
    if memo is not None:
        hit = memo.get(id(node), memo)
        if hit is not memo:
            memo[-1] = True  # an alias was followed: check the expansion afterwards
            return hit
    cls = node.__class__
    if cls is ScalarNode:
        result = _scalar(node)
    elif cls is SequenceNode:
        result = [_convert(item, doc, depth + 1, memo) for item in node.value]
    elif cls is MappingNode:
        result = {}
        merged: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                _merge_into(merged, _convert(value_node, doc, depth + 1, memo), doc, value_node)
                continue
            if key_node.__class__ is not ScalarNode:
                raise doc.error("mapping keys must be scalars (complex keys are not valid in Kubernetes objects)", key_node)
            key = _key_text(_scalar(key_node))
            if key in result:
                raise doc.error(f"duplicate key {key!r} (first at line {doc.line0 + lines[key] + 1})", key_node)
            lines[key] = key_node.start_mark.line
            result[key] = _convert(value_node, doc, depth + 1, memo)
        if merged:
            result = {**merged, **result}
    else:  # pragma: no cover - composer only makes these three
        raise doc.error(f"unexpected node {cls.__name__}", node)
    if memo is not None:
        memo[id(node)] = result
    return result


def _merge_into(merged: dict, value: Any, doc: Document, node: Node) -> None:
    # YAML merge keys ("<<: *base"), which go-yaml supports: earlier sources win.
    sources = value if isinstance(value, list) else [value]
    for src in sources:
        if not isinstance(src, dict):
            raise doc.error("merge key '<<' needs a mapping or a list of mappings", node)
        for k, v in src.items():
            merged.setdefault(k, v)


def _expanded_size(node: Node, sizes: dict[int, int], depth: int, doc: Document) -> int:
    known = sizes.get(id(node))
    if known is not None:
        return known
    if depth > MAX_DEPTH:
        raise doc.error(f"nesting deeper than {MAX_DEPTH} levels (recursive alias?)", node)
    if node.__class__ is ScalarNode:
        size = 1
    elif node.__class__ is SequenceNode:
        size = 1 + sum(_expanded_size(n, sizes, depth + 1, doc) for n in node.value)
    else:
        size = 1 + sum(_expanded_size(k, sizes, depth + 1, doc) + _expanded_size(v, sizes, depth + 1, doc)
                       for k, v in node.value)
    sizes[id(node)] = size
    return size


# --- output of values ---------------------------------------------------------------------


def dump_json(value: Any) -> str:
    """One JSON document as kubectl prints it (4-space indent), newline-terminated."""
    try:
        return json.dumps(value, indent=4, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise InputError(f"cannot write JSON: {exc}") from None


def dump_yaml(value: Any) -> str:
    """One YAML document in kubectl's style (keys in the order given, sequences not indented)."""
    dumper = getattr(yaml, "CSafeDumper", None) or yaml.SafeDumper
    return yaml.dump(value, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 30)


# --- rendering inserted text ------------------------------------------------------------------

_RESOLVER = yaml.resolver.Resolver()
_PLAIN = re.compile(r"[A-Za-z0-9_./=+~$(](?:[A-Za-z0-9_./=+~$()@ -]|:(?=[A-Za-z0-9_./=+~$(@-]))*")
_FLOW_PLAIN = re.compile(r"[A-Za-z0-9_./=+~$(](?:[A-Za-z0-9_./=+~$()@-]|:(?=[A-Za-z0-9_./=+~$(@-]))*")


_NOT_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _json_text(value: Any, indent: int | None = None) -> str:
    # JSON string syntax is valid YAML double-quoted syntax; YAML additionally
    # forbids some characters JSON leaves raw (DEL, C1 controls, lone surrogates)
    # and folds YAML 1.1's extra line breaks (NEL, LS, PS) unless escaped.
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    return _NOT_PRINTABLE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def _double_quoted(text: str) -> str:
    return _json_text(text)


_RENDERED: dict[tuple[str, bool], str] = {}


def render_scalar(value: Any, *, flow: bool = False, as_json: bool = False) -> str:
    """A scalar as YAML (or JSON) text that reads back as the same value under YAML 1.1 and go-yaml."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if as_json:
        return _double_quoted(text)
    # Sidecars repeat the same strings in every document: remember the verdicts.
    rendered = _RENDERED.get((text, flow))
    if rendered is None:
        pattern = _FLOW_PLAIN if flow else _PLAIN
        if (pattern.fullmatch(text) and not text.endswith(" ") and text not in _GO_BOOL_ONLY
                and _RESOLVER.resolve(ScalarNode, text, (True, False)) == STR):
            rendered = text
        else:
            rendered = _double_quoted(text)
        if len(_RENDERED) < 50_000:
            _RENDERED[(text, flow)] = rendered
    return rendered


def render_flow(value: Any, *, as_json: bool = False) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{render_scalar(k, flow=True, as_json=as_json)}: {render_flow(v, as_json=as_json)}"
                          for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_flow(v, as_json=as_json) for v in value) + "]"
    return render_scalar(value, flow=True, as_json=as_json)


@dataclasses.dataclass(frozen=True, slots=True)
class BlockStyle:
    """How a document indents: mapping step, and where a sequence's dash sits relative to its key."""

    step: int = 2
    seq_indent: int = 0  # kubectl and PyYAML write "key:\n- item"; ruamel/Helm often "key:\n  - item"
    newline: str = "\n"


def _literal_ok(text: str) -> bool:
    return ("\n" in text and text[:1] not in (" ", "\n", "\t") and not text.endswith("\n\n")
            and all(c == "\n" or c == "\t" or c >= " " for c in text) and "\r" not in text
            and not _NOT_PRINTABLE.search(text))


def render_block_entries(entries: dict, indent: int, style: BlockStyle) -> list[str]:
    """Lines (without newline) for mapping entries at column *indent*."""
    out: list[str] = []
    pad = " " * indent
    for key, value in entries.items():
        head = f"{pad}{render_scalar(key)}:"
        if isinstance(value, dict) and value:
            out.append(head)
            out += render_block_entries(value, indent + style.step, style)
        elif isinstance(value, (list, tuple)) and value:
            out.append(head)
            out += render_block_items(value, indent + style.seq_indent, style)
        elif isinstance(value, str) and _literal_ok(value):
            out.append(head + (" |" if value.endswith("\n") else " |-"))
            body = " " * (indent + style.step)
            out += [body + line if line else "" for line in value.rstrip("\n").split("\n")]
        else:
            out.append(f"{head} {render_flow(value)}")
    return out


_ITEMS: dict[tuple[str, int, BlockStyle], list[str]] = {}


def render_block_items(items, dash_col: int, style: BlockStyle) -> list[str]:
    """Lines for sequence items whose dash sits at column *dash_col*."""
    out: list[str] = []
    dash = " " * dash_col + "- "
    for item in items:
        if isinstance(item, dict) and item:
            # Injected sidecars repeat the same items (env entries, ports, volumes) in
            # every document: render each distinct one once per style and column.
            key = (repr(item), dash_col, style)
            lines = _ITEMS.get(key)
            if lines is None:
                lines = render_block_entries(item, dash_col + 2, style)
                lines = [dash + lines[0][dash_col + 2:], *lines[1:]]
                if len(_ITEMS) < 10_000:
                    _ITEMS[key] = lines
            out += lines
        else:
            out.append(dash + render_flow(item))
    return out


# --- surgical edits ----------------------------------------------------------------------------


class EditError(Exception):
    """The text cannot be edited in place (an alias or merge key on the path)."""

    def __init__(self, message: str, node: Node):
        super().__init__(message)
        self.node = node


def lookup(node: MappingNode, key: str) -> tuple[Node, Node] | None:
    """The (key, value) nodes of *key* in a mapping node, or None."""
    for key_node, value_node in node.value:
        if key_node.__class__ is ScalarNode and key_node.value == key:
            if value_node.start_mark.index < key_node.end_mark.index:
                raise EditError(f"{key!r} is an alias of another node; expand it to inject", key_node)
            return key_node, value_node
        if key_node.tag == MERGE:
            raise EditError("mapping uses a merge key '<<'; expand it to inject", key_node)
    return None


def is_null(node: Node) -> bool:
    return node.__class__ is ScalarNode and node.tag == NULL


class Editor:
    """Collects edits on one document's text and applies them in one pass.

    Edits address the nodes of the text as composed; they must not overlap.
    Insertions render at the indentation of their surroundings, in block or
    flow style (JSON inside JSON documents).
    """

    def __init__(self, doc: Document):
        self.doc = doc
        self.text = doc.text
        # (start, end, replacement, order): insertions at one position go deepest first.
        self.edits: list[tuple[int, int, str, int]] = []
        self._flow_dels: dict[tuple[int, int], tuple[list[int], list[int], set[int]]] = {}
        self._pending: dict[tuple[str, int], list] = {}
        self._style: BlockStyle | None = None

    # -- public operations ---------------------------------------------------------

    def set_entries(self, node: MappingNode, path: tuple, entries: dict) -> None:
        """Set *entries* in the mapping at *path* under *node*, creating mappings as needed."""
        cur = node
        for i, key in enumerate(path):
            found = lookup(cur, key)
            if found is None:
                self._add_entries(cur, {key: _nest(path[i + 1:], entries)})
                return
            key_node, value_node = found
            if is_null(value_node):
                self._replace_value(cur, key_node, value_node, _nest(path[i + 1:], entries))
                return
            if value_node.__class__ is not MappingNode:
                raise EditError(f"{'.'.join(map(str, path[: i + 1]))} is not a mapping", value_node)
            cur = value_node
        new = {}
        for key, value in entries.items():
            found = lookup(cur, key)
            if found is None:
                new[key] = value
            else:
                self._replace_value(cur, found[0], found[1], value)
        if new:
            self._add_entries(cur, new)

    def insert_items(self, node: MappingNode, path: tuple, index: int | None, items: list) -> None:
        """Insert *items* into the sequence at *path* (at *index*, or at the end when None)."""
        parent = node
        for i, key in enumerate(path[:-1]):
            found = lookup(parent, key)
            if found is None or is_null(found[1]):
                self.set_entries(parent, path[i:-1], {path[-1]: list(items)})
                return
            parent = found[1]
            if parent.__class__ is not MappingNode:
                raise EditError(f"{'.'.join(map(str, path[: i + 1]))} is not a mapping", parent)
        found = lookup(parent, path[-1])
        if found is None or is_null(found[1]):
            self.set_entries(parent, (), {path[-1]: list(items)})
            return
        seq = found[1]
        if seq.__class__ is not SequenceNode:
            raise EditError(f"{'.'.join(map(str, path))} is not a list", seq)
        if seq.flow_style:
            if self._fill_empty_json(seq, list(items)):
                return
            indent = self._flow_indent(seq)
            self._flow_insert(seq, [self._flow_text(v, indent) for v in items], index)
            return
        dash_col = self._dash_col(seq.value[0])
        lines = render_block_items(items, dash_col, self.style)
        if index is None or index >= len(seq.value):
            pos = self._line_after(seq.value[-1])
        else:
            pos = self._line_start(self._dash_pos(seq.value[index]))
        self._insert_lines(pos, lines)

    def delete(self, node: MappingNode, path: tuple) -> None:
        """Delete the mapping entry or sequence item at *path* (the last element is a key or an index)."""
        parent: Node = node
        for key in path[:-1]:
            parent = self._child(parent, key)
        last = path[-1]
        if parent.__class__ is MappingNode:
            pairs = parent.value
            pos = next((i for i, (k, _) in enumerate(pairs) if k.__class__ is ScalarNode and k.value == last), None)
            if pos is None:
                raise KeyError(path)
            key_node, value_node = pairs[pos]
            if parent.flow_style:
                starts = [k.start_mark.index for k, _ in pairs]
                ends = [v.end_mark.index for _, v in pairs]
                self._flow_delete(parent, starts, ends, pos)
                return
            start = key_node.start_mark.index
            line_start = self._line_start(start)
            if self.text[line_start:start].strip():
                # First entry of a "- key: value" item: keep the dash, drop up to the next key.
                if pos + 1 < len(pairs):
                    self._edit(start, pairs[pos + 1][0].start_mark.index, "")
                else:
                    self._edit(start, self._line_after(value_node) - 1, "{}")
                return
            self._edit(line_start, self._line_after(value_node), "")
        elif parent.__class__ is SequenceNode:
            items = parent.value
            item = items[last]
            if parent.flow_style:
                self._flow_delete(parent, [n.start_mark.index for n in items], [n.end_mark.index for n in items], last)
                return
            self._edit(self._line_start(self._dash_pos(item)), self._line_after(item), "")
        else:
            raise EditError("not a mapping or a list", parent)

    def result(self) -> str:
        self._flush_flow_deletes()
        self._flush_pending()
        if not self.edits:
            return self.text
        out, pos = [], 0
        for start, end, replacement, _ in sorted(self.edits, key=lambda e: (e[0], e[1], e[3])):
            if start < pos:
                raise AssertionError(f"overlapping edits at {start}")
            out.append(self.text[pos:start])
            out.append(replacement)
            pos = end
        out.append(self.text[pos:])
        return "".join(out)

    # -- style ---------------------------------------------------------------------------

    @property
    def style(self) -> BlockStyle:
        if self._style is None:
            self._style = self._detect_style()
        return self._style

    def _detect_style(self) -> BlockStyle:
        step, seq_indent = None, None
        newline = "\r\n" if "\r\n" in self.text else "\n"
        queue, seen = [self.doc.node], 0
        while queue and seen < 500 and (step is None or seq_indent is None):
            node = queue.pop(0)
            seen += 1
            if node.__class__ is MappingNode and not node.flow_style:
                for k, v in node.value:
                    if v.start_mark.index < k.end_mark.index:
                        continue  # alias
                    if v.__class__ is MappingNode and not v.flow_style and step is None and v.value:
                        d = v.value[0][0].start_mark.column - k.start_mark.column
                        step = d if d > 0 else None
                    if v.__class__ is SequenceNode and not v.flow_style and seq_indent is None and v.value:
                        seq_indent = max(0, self._dash_col(v.value[0]) - k.start_mark.column)
                    queue.append(v)
            elif node.__class__ is SequenceNode and not node.flow_style:
                queue.extend(node.value)
        return BlockStyle(step or 2, seq_indent if seq_indent is not None else 0, newline)

    # -- helpers ---------------------------------------------------------------------------

    def _child(self, node: Node, key) -> Node:
        if node.__class__ is MappingNode:
            found = lookup(node, key)
            if found is None:
                raise KeyError(key)
            return found[1]
        if node.__class__ is SequenceNode:
            return node.value[key]
        raise KeyError(key)

    def _line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def _line_after(self, node: Node) -> int:
        """Where the line after *node*'s last character begins.

        Block collections end where the next token starts (possibly after
        comments), so descend to the last leaf; block scalars already end at a
        line start.
        """
        floor = node.start_mark.index
        while node.__class__ is not ScalarNode and not node.flow_style and node.value:
            last = node.value[-1]
            if node.__class__ is MappingNode:
                key, value = last
                floor = key.end_mark.index
                node = value
            else:
                node = last
            if node.start_mark.index < floor:  # an alias: its text is elsewhere
                node = None
                break
            floor = node.start_mark.index
        end = floor if node is None else node.end_mark.index
        if end > 0 and self.text[end - 1] == "\n" and node is not None:
            return end
        nl = self.text.find("\n", end)
        return len(self.text) if nl < 0 else nl + 1

    def _dash_pos(self, item: Node) -> int:
        # The item's node starts after its "- " indicator (possibly on a later line).
        return self.text.rfind("-", 0, item.start_mark.index)

    def _dash_col(self, item: Node) -> int:
        pos = self._dash_pos(item)
        return pos - self._line_start(pos)

    def _edit(self, start: int, end: int, text: str, order: int = 0) -> None:
        self.edits.append((start, end, text, order))

    def _insert_lines(self, pos: int, lines: list[str]) -> None:
        nl = self.style.newline
        text = nl.join(lines) + nl
        if pos == len(self.text) and self.text and not self.text.endswith("\n"):
            text = nl + text
        indent = len(lines[0]) - len(lines[0].lstrip(" "))
        self._edit(pos, pos, text, -indent)

    def _flow_text(self, value: Any, indent: int | None = None) -> str:
        text = render_flow(value, as_json=self.doc.json) if indent is None or not self.doc.json else None
        if text is None:
            text = _json_text(value, self._json_step()).replace("\n", "\n" + " " * indent)
        return text

    def _json_step(self) -> int:
        root = self.doc.node
        if root is not None and root.__class__ is MappingNode and root.value:
            d = root.value[0][0].start_mark.column - root.start_mark.column
            if d > 0 and root.value[0][0].start_mark.line != root.start_mark.line:
                return d
        return 4

    def _add_entries(self, mapping: MappingNode, entries: dict) -> None:
        # Deferred to result(): two operations may create the same missing mapping
        # (annotations and labels under a new metadata), which must become one entry.
        pending = self._pending.setdefault(("add", id(mapping)), [mapping, {}])
        _deep_merge(pending[1], entries)

    def _fill_empty_json(self, coll: Node, value: Any) -> bool:
        """In pretty-printed JSON, fill an empty ``{}``/``[]`` the way json.dumps would indent it."""
        root = self.doc.node
        if coll.value or not self.doc.json or root is None or root.start_mark.line == root.end_mark.line:
            return False
        self._edit(coll.start_mark.index, coll.end_mark.index, self._flow_text(value, self._line_indent(coll.start_mark.index)))
        return True

    def _line_indent(self, index: int) -> int:
        line = self.text[self._line_start(index):index]
        return len(line) - len(line.lstrip(" "))

    def _emit_add_entries(self, mapping: MappingNode, entries: dict) -> None:
        if mapping.flow_style:
            if self._fill_empty_json(mapping, entries):
                return
            indent = self._flow_indent(mapping)
            texts = [f"{render_scalar(k, flow=True, as_json=self.doc.json)}: {self._flow_text(v, indent)}"
                     for k, v in entries.items()]
            self._flow_insert(mapping, texts, None)
            return
        indent = mapping.value[0][0].start_mark.column
        self._insert_lines(self._line_after(mapping), render_block_entries(entries, indent, self.style))

    def _flow_insert(self, coll: Node, texts: list[str], index: int | None) -> None:
        items = coll.value
        if coll.__class__ is MappingNode:
            starts = [k.start_mark.index for k, _ in items]
            ends = [v.end_mark.index for _, v in items]
        else:
            starts = [n.start_mark.index for n in items]
            ends = [n.end_mark.index for n in items]
        indent = self._flow_indent(coll)
        sep = ", " if indent is None else "," + self.style.newline + " " * indent
        if not items:
            self._edit(coll.end_mark.index - 1, coll.end_mark.index - 1, ", ".join(texts))
        elif index is None or index >= len(items):
            self._edit(ends[-1], ends[-1], "".join(sep + t for t in texts))
        else:
            # Before an item: stay on its line, so the edit never depends on a column
            # that other edits on the same line may shift.
            self._edit(starts[index], starts[index], "".join(t + ", " for t in texts))

    def _flow_indent(self, coll: Node) -> int | None:
        """Indentation for items added to a multi-line flow collection: that of the line
        where its last item ends (stable under edits earlier on the first line)."""
        if not coll.value or coll.start_mark.line == coll.end_mark.line:
            return None
        last = coll.value[-1][1] if coll.__class__ is MappingNode else coll.value[-1]
        return self._line_indent(max(last.end_mark.index - 1, last.start_mark.index))

    def _flow_delete(self, coll: Node, starts: list[int], ends: list[int], pos: int) -> None:
        # Deletions in one flow collection are resolved together in result(): the
        # commas to drop depend on which neighbours go too.
        bounds = (coll.start_mark.index, coll.end_mark.index)
        self._flow_dels.setdefault(bounds, (starts, ends, set()))[2].add(pos)

    def _flush_flow_deletes(self) -> None:
        for (open_, close), (starts, ends, gone) in self._flow_dels.items():
            if len(gone) == len(starts):
                self._edit(open_ + 1, close - 1, "")  # everything between the brackets: "{}"
                continue
            leading = 0
            while leading in gone:
                leading += 1
            for i in sorted(gone):
                if i < leading:
                    self._edit(starts[i], starts[i + 1], "")
                else:
                    self._edit(ends[i - 1], ends[i], "")
        self._flow_dels.clear()

    def _replace_value(self, mapping: MappingNode, key_node: Node, value_node: Node, value: Any) -> None:
        if isinstance(value, dict):
            pending = self._pending.setdefault(("replace", id(value_node)), [mapping, key_node, value_node, {}])
            _deep_merge(pending[3], value)
        else:
            self._emit_replace_value(mapping, key_node, value_node, value)

    def _flush_pending(self) -> None:
        for (what, _), args in self._pending.items():
            if what == "add":
                self._emit_add_entries(*args)
            else:
                self._emit_replace_value(*args)
        self._pending.clear()

    def _emit_replace_value(self, mapping: MappingNode, key_node: Node, value_node: Node, value: Any) -> None:
        """Replace a scalar (often an empty or null placeholder) with *value*."""
        if mapping.flow_style or value_node.__class__ is not ScalarNode:
            if value_node.__class__ is not ScalarNode:
                raise EditError("cannot replace a collection", value_node)
            multiline = self.doc.json and self.doc.node.start_mark.line != self.doc.node.end_mark.line
            indent = self._line_indent(value_node.start_mark.index) if multiline else None
            self._edit(value_node.start_mark.index, value_node.end_mark.index, self._flow_text(value, indent))
            return
        colon = self.text.index(":", key_node.end_mark.index) + 1
        if isinstance(value, dict) and value:
            lines = render_block_entries(value, key_node.start_mark.column + self.style.step, self.style)
        elif isinstance(value, (list, tuple)) and value:
            lines = render_block_items(value, key_node.start_mark.column + self.style.seq_indent, self.style)
        else:
            self._edit(colon, value_node.end_mark.index, " " + render_flow(value))
            return
        self._edit(colon, value_node.end_mark.index, self.style.newline + self.style.newline.join(lines))


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _deep_merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        else:
            into[key] = value


def _nest(path: tuple, entries: dict) -> Any:
    value: Any = dict(entries)
    for key in reversed(path):
        value = {key: value}
    return value
