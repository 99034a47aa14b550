"""Round trips: any graph written by ``generate`` parses back equal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyglfs.volfiles.generator import generate, quote_value
from pyglfs.volfiles.model import Graph, Xlator, is_token
from pyglfs.volfiles.parser import parse

_token_chars = st.characters(codec="utf-8", exclude_characters='#"')
tokens = st.text(_token_chars, min_size=1, max_size=12).filter(is_token)
# Values: anything, including quotes, '#', edge whitespace and control characters.
values = st.text(max_size=24) | st.sampled_from(
    ["", " ", "a #b", "#x", '"q"', "a\tb", "x\n", "\x00\x7f\x85", "\\", "\u2028", " a "])


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    names = draw(st.lists(tokens, min_size=1, max_size=7, unique=True))
    xls: list[Xlator] = []
    for name in names:
        subs = draw(st.lists(st.sampled_from(xls), unique_by=lambda x: x.name, max_size=4)
                    if xls else st.just([]))
        opts = draw(st.dictionaries(tokens, values, max_size=5))
        xls.append(Xlator(name, draw(tokens), opts, subs))
    top = draw(st.sampled_from(names))
    return Graph.from_xlators(xls, top)


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_generate_then_parse_is_identity(g: Graph) -> None:
    text = generate(g, header="generated\nfor a test")
    back = parse(text, top=g.top.name)
    assert back == g
    for xl in g:
        assert back[xl.name].options == xl.options
        assert back[xl.name].subvolume_names == xl.subvolume_names
    if g.top is list(g)[-1]:
        assert parse(text) == g


@given(values)
def test_any_value_survives_one_option_line(v: str) -> None:
    g = parse(f"volume a\n type t\n option k {quote_value(v)}\nend-volume\n")
    assert g["a"].options["k"] == v


def test_plain_values_are_written_unquoted() -> None:
    for v in ("auto", "127.0.0.2", "a b  c", "x#y", "1,2"):
        assert quote_value(v) == v
    assert quote_value("") == '""'
    assert quote_value(" x") == '" x"'
    assert quote_value("a #b") == '"a #b"'
    assert quote_value('"x') == '"\\"x"'
    assert quote_value("a\tb\x01") == '"a\\tb\\x01"'
