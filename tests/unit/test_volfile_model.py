"""The graph model and the typed option helpers the client reads options with."""

from __future__ import annotations

import pytest

from pyglfs.volfiles.model import Graph, VolfileError, Xlator, parse_size
from pyglfs.volfiles.parser import parse

TEXT = """\
volume c0
    type protocol/client
    option ping-timeout 7
    option bad-int 7x
    option neg -3
    option t 2.5
    option nan nan
    option yes Yes
    option off off
    option maybe maybe
    option qt AUTO
    option size 128KB
    option size2 1MiB
    option list a, b,,c
end-volume
"""


@pytest.fixture
def xl() -> Xlator:
    return parse(TEXT, source="t.vol")["c0"]


def test_opt_int(xl: Xlator) -> None:
    assert xl.opt_int("ping-timeout", 10) == 7
    assert xl.opt_int("absent", 10) == 10
    assert xl.opt_int("neg", 0) == -3
    with pytest.raises(VolfileError) as ei:
        xl.opt_int("bad-int", 0)
    assert str(ei.value) == ("t.vol:4: volume 'c0': invalid value '7x' for option 'bad-int': "
                             "expected an integer")
    with pytest.raises(VolfileError, match=r"'neg': expected an integer >= 0") as ei:
        xl.opt_int("neg", 0, min=0)
    assert ei.value.line == 5
    with pytest.raises(VolfileError, match=r"expected an integer in 0\.\.5"):
        xl.opt_int("ping-timeout", 0, min=0, max=5)


def test_opt_float(xl: Xlator) -> None:
    assert xl.opt_float("t", 1.0) == 2.5
    assert xl.opt_float("ping-timeout", 1.0) == 7.0
    assert xl.opt_float("absent", 1.5) == 1.5
    with pytest.raises(VolfileError, match="'nan': expected a number"):
        xl.opt_float("nan", 0.0)
    with pytest.raises(VolfileError, match="expected a number <= 2"):
        xl.opt_float("t", 0.0, max=2)


def test_opt_bool_and_choice(xl: Xlator) -> None:
    assert xl.opt_bool("yes", False) is True
    assert xl.opt_bool("off", True) is False
    assert xl.opt_bool("absent", True) is True
    with pytest.raises(VolfileError, match="'maybe' for option 'maybe': expected on or off"):
        xl.opt_bool("maybe", False)
    assert xl.opt_choice("qt", ("none", "auto", "fixed"), "none") == "auto"
    assert xl.opt_choice("absent", ("none", "auto"), "none") == "none"
    with pytest.raises(VolfileError, match="expected one of none, fixed"):
        xl.opt_choice("qt", ("none", "fixed"), "none")


def test_opt_size_list_str(xl: Xlator) -> None:
    assert xl.opt_size("size", 0) == 128 * 1024
    assert xl.opt_size("size2", 0) == 1 << 20
    assert xl.opt_size("absent", 5) == 5
    with pytest.raises(VolfileError, match="expected a size"):
        xl.opt_size("maybe", 0)
    assert xl.opt_list("list") == ["a", "b", "c"]
    assert xl.opt_list("absent", ["x"]) == ["x"]
    assert xl.opt_str("qt", "") == "AUTO" and xl.opt("absent") is None
    assert parse_size("4096") == 4096 and parse_size("2g") == 2 << 30


def test_helpers_on_a_built_xlator_have_no_place() -> None:
    x = Xlator("v", "t", {"n": "z"})
    with pytest.raises(VolfileError) as ei:
        x.opt_int("n", 0)
    assert ei.value.line is None
    assert str(ei.value) == "volume 'v': invalid value 'z' for option 'n': expected an integer"


def test_graph_validation() -> None:
    a = Xlator("a", "t")
    b = Xlator("b", "t", subvolumes=[a])
    g = Graph.from_xlators([a, b])
    assert g.top is b and len(g) == 2 and "a" in g and g.get("zz") is None
    with pytest.raises(VolfileError, match="not defined before it"):
        Graph.from_xlators([b, a])
    with pytest.raises(VolfileError, match="not defined before it"):
        Graph.from_xlators([Xlator("a", "t"), b])  # a different object named 'a'
    with pytest.raises(VolfileError, match="duplicate volume name 'a'"):
        Graph.from_xlators([a, Xlator("a", "t")])
    with pytest.raises(VolfileError, match="names subvolume 'a' twice"):
        Graph.from_xlators([a, Xlator("c", "t", subvolumes=[a, a])])
    with pytest.raises(VolfileError, match="invalid volume name 'x y'"):
        Graph.from_xlators([Xlator("x y", "t")])
    with pytest.raises(VolfileError, match="invalid option name"):
        Graph.from_xlators([Xlator("x", "t", {"#k": "v"})])
    with pytest.raises(VolfileError, match="at least one volume"):
        Graph.from_xlators([])
    with pytest.raises(VolfileError, match="top volume 'q' is not defined"):
        Graph.from_xlators([a], top="q")
    with pytest.raises(VolfileError, match="is not part of the graph"):
        Graph(Xlator("a", "t"), {"a": a})


def test_equality_and_copy() -> None:
    g = parse("volume a\n type t\n option k v\nend-volume\nvolume b\n type u\n subvolumes a\n"
              "end-volume\n")
    h = g.copy()
    assert h == g and h["b"].subvolumes[0] is h["a"] and h["a"] is not g["a"]
    h["a"].options["k"] = "w"
    assert h != g and g["a"].options["k"] == "v"
    assert parse("volume a\n type t\nend-volume\nvolume b\n type u\nend-volume\n") != parse(
        "volume a\n type t\nend-volume\nvolume b\n type u\n subvolumes a\nend-volume\n")
    assert g != parse("volume a\n type t\n option k v\nend-volume\nvolume b\n type u\n"
                      " subvolumes a\nend-volume\n", top="a")
