"""The volfile parser: what it accepts, and the line of every error it reports."""

from __future__ import annotations

import pathlib

import pytest

from pyglfs.volfiles.model import VolfileError
from pyglfs.volfiles.parser import parse, parse_bytes, parse_file

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "volfiles" / "examples"

GOOD = """\
# a comment
volume v-client-0
    type protocol/client
    option remote-host 127.0.0.2   # trailing comment
    option remote-port 49750
end-volume

volume v-client-1
  type protocol/client
\toption remote-host\t127.0.0.3
end-volume
volume v-replicate-0
    type cluster/replicate
    subvolumes v-client-0 v-client-1
    option quorum-type auto
end-volume
"""


def test_parses_volumes_options_and_wiring() -> None:
    g = parse(GOOD)
    assert list(g.xlators) == ["v-client-0", "v-client-1", "v-replicate-0"]
    assert g.top.name == "v-replicate-0" and g.name == "v-replicate-0"
    c0 = g["v-client-0"]
    assert c0.type == "protocol/client"
    assert c0.options == {"remote-host": "127.0.0.2", "remote-port": "49750"}
    assert g["v-client-1"].options == {"remote-host": "127.0.0.3"}
    assert g.top.subvolumes[0] is c0
    assert g.top.subvolume_names == ["v-client-0", "v-client-1"]
    assert g.top.options == {"quorum-type": "auto"}
    assert [x.name for x in g.by_type("protocol/client")] == ["v-client-0", "v-client-1"]
    assert [x.name for x in g.walk()] == ["v-replicate-0", "v-client-0", "v-client-1"]
    assert [x.name for x in g.parents("v-client-1")] == ["v-replicate-0"]
    assert c0.line == 2 and c0.option_lines["remote-port"] == 5


def test_explicit_top_and_unknown_top() -> None:
    g = parse(GOOD, top="v-client-1")
    assert g.top.name == "v-client-1"
    assert [x.name for x in g.walk()] == ["v-client-1"]
    with pytest.raises(VolfileError, match="top volume 'nope' is not defined"):
        parse(GOOD, top="nope")


def test_value_is_rest_of_line_with_inner_spaces() -> None:
    g = parse("volume a\n type t\n option k  one  two\tthree   \n option h a#b c\nend-volume\n")
    assert g["a"].options == {"k": "one  two\tthree", "h": "a#b c"}


def test_quoted_values() -> None:
    text = ('volume a\n type t\n option e ""\n option s "  x # y "  # c\n'
            ' option q "say \\"hi\\"\\\\ \\n\\t\\r\\x00"\n option x "a"#c\nend-volume\n')
    assert parse(text)["a"].options == {
        "e": "", "s": "  x # y ", "q": 'say "hi"\\ \n\t\r\x00', "x": "a"}


def test_crlf_and_bom_and_shared_subvolume() -> None:
    text = ("volume a\r\n type t\r\nend-volume\r\nvolume b\r\n type t\r\n subvolumes a\r\n"
            "end-volume\r\nvolume c\r\n type t\r\n subvolumes a b\r\nend-volume\r\n")
    g = parse_bytes(b"\xef\xbb\xbf" + text.encode())
    assert g["c"].subvolumes[0] is g["b"].subvolumes[0] is g["a"]


# (text, line, column or None, message fragment)
ERRORS = [
    ("volume a\n type t\n frobnicate x\nend-volume\n", 3, 2, "unknown keyword 'frobnicate'"),
    ("volume a\n type t\n", 1, None, "volume 'a' has no 'end-volume'"),
    ("volume a\n type t\nvolume b\n type t\nend-volume\n", 3, 1,
     "'volume' inside volume 'a' (line 1): missing 'end-volume'"),
    ("volume a\n type t\nend-volume\n\nvolume a\n type u\nend-volume\n", 5, 8,
     "duplicate volume name 'a' (first defined on line 1)"),
    ("volume a\n type t\n option ping-timeout\nend-volume\n", 3, 9,
     "option 'ping-timeout' has no value"),
    ("volume a\n type t\n option k   # only a comment\nend-volume\n", 3, 9,
     "option 'k' has no value"),
    ("volume a\n type t\n option\nend-volume\n", 3, 2, "'option' needs a name and a value"),
    ("volume a\n type t\n option k 1\n option k 2\nend-volume\n", 4, 9,
     "option 'k' given twice in volume 'a' (first on line 3)"),
    ("volume b\n type t\n subvolumes a\nend-volume\nvolume a\n type t\nend-volume\n", 3, 13,
     "'subvolumes' names volume 'a' before its definition on line 5"),
    ("volume gvol0\n type t\n subvolumes x\nend-volume\n", 3, 13,
     "'subvolumes' names unknown volume 'x'"),
    ("volume a\n type t\n subvolumes a\nend-volume\n", 3, 13,
     "volume 'a' names itself in 'subvolumes'"),
    ("volume a\n type t\nend-volume\nvolume b\n type t\n subvolumes a a\nend-volume\n", 6, 15,
     "'subvolumes' names volume 'a' twice"),
    ("volume a\n type t\nend-volume\nvolume b\n type t\n subvolumes a\n subvolumes a\n"
     "end-volume\n", 7, 2, "volume 'b' has a second 'subvolumes' (first on line 6)"),
    ("volume a\n type t\n subvolumes\nend-volume\n", 3, 2,
     "'subvolumes' needs at least one volume name"),
    ("volume a\n option k v\nend-volume\n", 3, None, "volume 'a' has no 'type'"),
    ("volume a\n type t\n type u\nend-volume\n", 3, 2,
     "volume 'a' has a second 'type' (first on line 2)"),
    ("volume a\n type\nend-volume\n", 2, 2, "'type' takes exactly one word"),
    ("volume a\n type t u\nend-volume\n", 2, 2, "'type' takes exactly one word"),
    ("volume\n", 1, 1, "'volume' takes exactly one name"),
    ("volume a b\n", 1, 1, "'volume' takes exactly one name"),
    ("volume a\n type t\nend-volume now\n", 3, 12, "unexpected text after 'end-volume'"),
    ("\n type t\n", 2, 2, "'type' outside a volume"),
    ("end-volume\n", 1, 1, "'end-volume' outside a volume"),
    ("volume a\n type t\n option k v\x00v\nend-volume\n", 3, 12,
     "unexpected control character U+0000"),
    ("volume a\n type t\n option k \"abc\nend-volume\n", 3, 11,
     "quoted value has no closing"),
    ("volume a\n type t\n option k \"a\\qb\"\nend-volume\n", 3, 13, "invalid escape"),
    ("volume a\n type t\n option k \"a\\x4\"\nend-volume\n", 3, 13, "invalid escape"),
    ("volume a\n type t\n option k \"a\" b\nend-volume\n", 3, 15,
     "unexpected text after a quoted value"),
    ('volume a"b\n', 1, 8, "invalid volume name 'a\"b'"),
    ("volume a\n type t\n option k#x v\nend-volume\n", 3, 9, "invalid option name 'k#x'"),
    ("volume a\n type t\nend-volume\nvolume b\n type t\n subvolumes \"a\"\nend-volume\n",
     6, 13, "invalid volume name"),
    ("\xff\xfe garbage here\n", 1, 1, "unknown keyword"),
    ("", None, None, "no volume is defined"),
    ("# just a comment\n\n   \n", None, None, "no volume is defined"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), ERRORS)
def test_errors_name_their_line(text: str, line: int | None, column: int | None,
                                fragment: str) -> None:
    with pytest.raises(VolfileError) as ei:
        parse(text, source="gvol0.vol")
    e = ei.value
    assert fragment in e.message
    assert e.line == line
    assert e.column == column
    prefix = f"gvol0.vol:{line}: " if line is not None else "gvol0.vol: "
    assert str(e) == prefix + e.message


def test_error_message_format_from_the_issue() -> None:
    text = "volume a\n type t\nend-volume\n" + "\n" * 7 + "volume b\n subvolumes x\n"
    with pytest.raises(VolfileError) as ei:
        parse(text, source="gvol0.vol")
    assert str(ei.value) == "gvol0.vol:12: 'subvolumes' names unknown volume 'x'"


def test_first_error_in_file_order_wins() -> None:
    text = "volume a\n type t\n bogus\n option k\nend-volume\n"
    with pytest.raises(VolfileError) as ei:
        parse(text)
    assert ei.value.line == 3


def test_not_utf8_reports_line_and_column() -> None:
    with pytest.raises(VolfileError) as ei:
        parse_bytes(b"volume a\n type t\n option k ab\xff\nend-volume\n", source="x.vol")
    assert (ei.value.line, ei.value.column) == (3, 13)
    assert "not UTF-8" in str(ei.value)


def test_parse_file_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(VolfileError, match="cannot read volfile"):
        parse_file(tmp_path / "missing.vol")
    p = tmp_path / "bad.vol"
    p.write_text("volume a\n")
    with pytest.raises(VolfileError) as ei:
        parse_file(p)
    assert str(ei.value).startswith(f"{p}:1: ")
    big = tmp_path / "big.vol"
    big.write_bytes(b"#" * (4 << 20) + b"\n")
    with pytest.raises(VolfileError, match="larger than"):
        parse_file(big)


def test_examples_parse() -> None:
    r2 = parse_file(EXAMPLES / "replica2.vol")
    assert r2.top.name == "gvol0" and r2.top.type == "debug/io-stats"
    clients = r2.by_type("protocol/client")
    assert [(c.options["remote-host"], c.opt_int("remote-port", 0)) for c in clients] == [
        ("127.0.0.2", 49750), ("127.0.0.3", 49751)]
    (rep,) = r2.by_type("cluster/replicate")
    assert rep.subvolumes == clients
    assert rep.opt_list("afr-pending-xattr") == [c.name for c in clients]
    single = parse_file(EXAMPLES / "single.vol")
    assert len(single.by_type("protocol/client")) == 1
    assert not single.by_type("cluster/replicate")
    (wb,) = single.by_type("performance/write-behind")
    assert single.top.subvolumes == [wb] and wb.subvolumes == single.by_type("protocol/client")
