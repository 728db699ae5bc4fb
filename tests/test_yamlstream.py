"""meshctl.yamlstream: reading streams safely, values as Kubernetes reads them, surgical edits."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshctl import yamlstream
from meshctl.errors import InputError


def docs(text: str, source: str = "s.yaml"):
    return list(yamlstream.documents(text, source))


# --- splitting and numbering ------------------------------------------------------------


def test_documents_concatenate_back_to_the_stream_and_are_numbered_like_users_count():
    text = "# leading comment\n---\na: 1\n--- # two\nb: 2\n...\n---\n# empty\n...\n%YAML 1.1\n---\nc: 3"
    got = docs(text)
    assert "".join(d.text for d in got) == text
    assert [(d.number, d.value()) for d in got] == [(0, None), (1, {"a": 1}), (2, {"b": 2}), (3, None), (4, {"c": 3})]


def test_first_document_without_separator_is_document_one():
    got = docs("a: 1\n---\nb: 2\n")
    assert [(d.number, d.value()) for d in got] == [(1, {"a": 1}), (2, {"b": 2})]


def test_json_stream_of_several_values():
    text = '{"kind": "A"}\n{"kind": "B",\n "x": [1, 2]}\n'
    got = docs(text)
    assert [d.value() for d in got] == [{"kind": "A"}, {"kind": "B", "x": [1, 2]}]
    assert all(d.json for d in got)
    assert "".join(d.text for d in got) == text


def test_json_error_names_document_and_line():
    with pytest.raises(InputError, match=r"^s.json: document 2, line 3: invalid JSON"):
        docs('{"a": 1}\n{"b":\n ,}', "s.json")


# --- errors and limits --------------------------------------------------------------------


def test_syntax_error_names_source_document_and_stream_line():
    with pytest.raises(InputError, match=r"^shop.yaml: document 2, line 5: "):
        docs("a: 1\n---\nb:\n  c: 1\n d: [\n", "shop.yaml")


def test_duplicate_keys_are_an_error_with_both_lines():
    with pytest.raises(InputError, match=r"document 1, line 3: duplicate key 'a' \(first at line 1\)"):
        docs("a: 1\nb: 2\na: 3\n")[0].value()


def test_duplicate_keys_after_yaml_resolution():
    # `on` and `true` are the same key to Kubernetes (go-yaml, YAML 1.1).
    with pytest.raises(InputError, match="duplicate key 'true'"):
        docs("on: 1\ntrue: 2\n")[0].value()


def test_alias_bomb_is_refused_without_expanding_it():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(InputError, match="excessive aliasing"):
        docs("\n".join(lines) + "\n")[0].value()


def test_modest_aliases_are_fine():
    value = docs("base: &b {cpu: 1}\nx: *b\nw: *b\nz:\n  <<: *b\n  mem: 2\n")[0].value()
    assert value == {"base": {"cpu": 1}, "x": {"cpu": 1}, "w": {"cpu": 1}, "z": {"cpu": 1, "mem": 2}}


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100_000 + "]" * 100_000 + "\n",       # would overflow libyaml's recursive composer
    "a: " + "{x: " * 300 + "1" + "}" * 300 + "\n",
    "".join(" " * i + "k:\n" for i in range(300)) + " " * 300 + "v\n",  # block nesting
    "- " * 300 + "x\n",
])
def test_absurd_nesting_is_refused(text):
    with pytest.raises(InputError, match=r"nesting deeper than 256 levels"):
        for d in docs(text):
            d.value()


def test_json_nesting_is_refused():
    with pytest.raises(InputError, match=r"nesting deeper than"):
        docs("[" * 50_000 + "]" * 50_000)


def test_oversized_input_is_refused(monkeypatch):
    monkeypatch.setattr(yamlstream, "MAX_INPUT_BYTES", 1024)
    with pytest.raises(InputError, match=r"^big.yaml: input larger than"):
        yamlstream.read_text(b"a: 1\n" * 300, "big.yaml")
    with pytest.raises(InputError, match=r"input larger than"):
        docs("a: 1\n" * 300)


def test_decoding():
    assert yamlstream.read_text("a: é\n".encode("utf-8-sig"), "x") == "a: é\n"
    assert yamlstream.read_text("a: é\n".encode("utf-16"), "x") == "a: é\n"
    with pytest.raises(InputError, match=r"^x: line 2: not valid UTF-8"):
        yamlstream.read_text(b"a: 1\nb: \xff\n", "x")


def test_non_mapping_keys_are_refused():
    with pytest.raises(InputError, match="mapping keys must be scalars"):
        docs("? [a, b]\n: 1\n")[0].value()


# --- values as Kubernetes reads them --------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("yes", True), ("On", True), ("y", True), ("N", False), ("off", False), ("true", True),
    ('"yes"', "yes"), ("'y'", "y"), ("0644", 420), ('"0644"', "0644"), ("0x1F", 31), ("0b101", 5),
    ("1_000", 1000), ("-12", -12), ("1:30", "1:30"), ("1.5", 1.5), ("~", None), ("null", None), ("", None),
    ("2026-01-02", "2026-01-02"), ("NO", False), ('"NO"', "NO"),
])
def test_scalars_resolve_as_kubernetes_does(text, value):
    assert docs(f"k: {text}\n")[0].value() == {"k": value}


def test_non_string_keys_become_strings_like_yaml_to_json():
    assert docs("80: http\ntrue: x\n")[0].value() == {"80": "http", "true": "x"}


def test_infinity_cannot_be_written_as_json():
    value = docs("k: .inf\n")[0].value()
    with pytest.raises(InputError, match="cannot write JSON"):
        yamlstream.dump_json(value)


# --- rendering ---------------------------------------------------------------------------------

tricky = st.one_of(
    st.sampled_from(["on", "NO", "y", "n", "0644", "0x1F", "1:30", "true", "null", "~", "", " lead", "trail ",
                     "a: b", "#x", "x #y", "- x", "[a]", "{a}", "*a", "&a", "!t", "%p", "@x", "`x", "'q'", '"d"',
                     "multi\nline\n", "no newline\nat end", "tab\tin", "é ü", "$(VAR).x", "2026-01-01", "1e3",
                     ".inf", "=", "a,b", "k8s.io/name", "--flag"]),
    st.text(max_size=12),
)


@given(tricky)
def test_rendered_scalars_read_back_unchanged(value):
    for rendered in (yamlstream.render_scalar(value), yamlstream.render_flow({"k": value})):
        text = f"k: {rendered}\n" if not rendered.startswith("{") else rendered + "\n"
        assert docs(text)[0].value() == {"k": value}, rendered
    lines = yamlstream.render_block_entries({"k": value}, 0, yamlstream.BlockStyle())
    assert docs("\n".join(lines) + "\n")[0].value() == {"k": value}


# --- surgical edits ---------------------------------------------------------------------------


def edit(text: str, fn) -> str:
    doc = docs(text)[0]
    editor = yamlstream.Editor(doc)
    fn(editor, doc.node)
    return editor.result()


def test_set_entries_in_block_mapping_keeps_comments_and_quoting():
    text = "a:\n  b: \"0644\"  # keep\n  c: 'on'\n# trailing\nd: 1\n"
    out = edit(text, lambda e, n: e.set_entries(n, ("a",), {"x": "v"}))
    assert out == "a:\n  b: \"0644\"  # keep\n  c: 'on'\n  x: v\n# trailing\nd: 1\n"


def test_set_entries_creates_missing_mappings_once():
    text = "spec:\n  x: 1\n"
    out = edit(text, lambda e, n: (e.set_entries(n, ("meta", "annotations"), {"a": "1"}),
                                   e.set_entries(n, ("meta", "labels"), {"b": "2"})))
    assert out == 'spec:\n  x: 1\nmeta:\n  annotations:\n    a: "1"\n  labels:\n    b: "2"\n'


def test_insert_items_in_indented_and_flow_sequences():
    text = "l:\n    - a\n    - b\nf: [x]\n"
    out = edit(text, lambda e, n: (e.insert_items(n, ("l",), 0, ["z"]), e.insert_items(n, ("f",), None, ["w"])))
    assert out == "l:\n    - z\n    - a\n    - b\nf: [x, w]\n"


def test_delete_block_and_flow_entries():
    text = "m:\n  a: 1\n  b:\n    deep: 2\n  c: 3\nf: {x: 1, y: 2, z: 3}\nl:\n- p\n- q\n"
    out = edit(text, lambda e, n: (e.delete(n, ("m", "b")), e.delete(n, ("f", "x")), e.delete(n, ("f", "z")),
                                   e.delete(n, ("l", 0))))
    assert out == "m:\n  a: 1\n  c: 3\nf: {y: 2}\nl:\n- q\n"


def test_edits_in_pretty_json_follow_its_indentation():
    text = json.dumps({"a": {"b": 1}, "c": {}}, indent=2) + "\n"
    doc = docs(text, "x.json")[0]
    editor = yamlstream.Editor(doc)
    editor.set_entries(doc.node, ("a",), {"n": "v"})
    editor.set_entries(doc.node, ("c",), {"k": [1]})
    out = editor.result()
    assert json.loads(out) == {"a": {"b": 1, "n": "v"}, "c": {"k": [1]}}
    assert out == json.dumps({"a": {"b": 1, "n": "v"}, "c": {"k": [1]}}, indent=2) + "\n"


def test_aliases_on_an_edit_path_are_refused():
    text = "base: &m {a: 1}\nmeta: *m\n"
    with pytest.raises(yamlstream.EditError, match="alias"):
        edit(text, lambda e, n: e.set_entries(n, ("meta",), {"x": "y"}))


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), tricky),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "on", "0"]), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=st.dictionaries(st.sampled_from(["k", "m", "spec", "zz"]), values, min_size=1, max_size=4),
       entries=st.dictionaries(st.sampled_from(["new", "n2", "on"]), values, min_size=1, max_size=3),
       style=st.sampled_from(["block", "flow", "json", "indent4"]))
def test_set_entries_reads_back_as_the_dict_update(original, entries, style):
    if style == "json":
        text = json.dumps(original, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(original, default_flow_style=(style == "flow"), sort_keys=False,
                              indent=4 if style == "indent4" else 2)
    doc = docs(text, "p.json" if style == "json" else "p.yaml")[0]
    editor = yamlstream.Editor(doc)
    editor.set_entries(doc.node, ("target",), entries)
    out = editor.result()
    assert docs(out)[0].value() == {**docs(text)[0].value(), "target": entries}
