"""Reading volfiles: text in GlusterFS volfile syntax to a validated ``Graph``.

Syntax (one statement a line; keywords are case-sensitive)::

    volume NAME
        type TYPE
        option KEY VALUE
        subvolumes NAME [NAME ...]
    end-volume

- Blank lines are ignored; ``#`` starts a comment when it begins a token (at
  the start of a line or after whitespace), so ``a#b`` is one word.
- NAME, TYPE and KEY are single words: no whitespace, ``#``, ``"`` or
  unprintable characters.
- VALUE is the rest of the line, with surrounding whitespace and any trailing
  comment removed; whitespace inside it is kept as written. A value that
  begins with ``"`` is a quoted string instead, running to the next unescaped
  ``"``, with the escapes ``\\\\ \\" \\n \\t \\r \\xHH``; only a comment may follow
  it. Quoting is how a value carries what a bare one cannot: nothing at all,
  edge whitespace, `` #``, a leading ``"`` or a control character.
- A volume needs a ``type``; ``option`` keys, ``type`` and ``subvolumes`` appear at
  most once in it. Subvolumes must be defined before they are named, as in
  GlusterFS, so no graph can have a cycle.
- The top of the graph is the last volume defined, unless ``top`` names one.

Every error is a ``VolfileError`` with the 1-based line (and column where one
token is at fault) of the first problem in the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pyglfs.volfiles.model import Graph, VolfileError, Xlator, is_token

MAX_VOLFILE_BYTES = 4 << 20
KEYWORDS = ("volume", "type", "option", "subvolumes", "end-volume")

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_COMMENT = re.compile(r"\s#")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")


def _tokens(line: str, start: int = 0) -> list[tuple[str, int]]:
    """Whitespace-separated words up to a comment, with 1-based columns."""
    out: list[tuple[str, int]] = []
    i, n = start, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == "#":
            break
        j = i
        while j < n and not line[j].isspace():
            j += 1
        out.append((line[i:j], i + 1))
        i = j
    return out


@dataclass
class _Open:
    """A volume between ``volume`` and ``end-volume``."""

    name: str
    line: int
    type: str | None = None
    type_line: int = 0
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)
    subvolumes: list[Xlator] | None = None
    subvolumes_line: int = 0


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = text.split("\n")
        self.lineno = 0
        self.defined: dict[str, Xlator] = {}
        self.cur: _Open | None = None

    def err(self, msg: str, column: int | None = None, line: int | None = None) -> VolfileError:
        return VolfileError(msg, source=self.source,
                            line=self.lineno if line is None else line, column=column)

    def word(self, tok: tuple[str, int], what: str) -> str:
        s, col = tok
        if not is_token(s):
            raise self.err(f"invalid {what} {s!r}: must be printable, without '#' or '\"'", col)
        return s

    def run(self) -> list[Xlator]:
        for lineno, raw in enumerate(self.lines, 1):
            self.lineno = lineno
            line = raw[:-1] if raw.endswith("\r") else raw
            bad = _CTRL.search(line)
            if bad is not None:
                raise self.err(f"unexpected control character U+{ord(bad.group()):04X}",
                               bad.start() + 1)
            toks = _tokens(line)
            if toks:
                self.statement(line, toks)
        if self.cur is not None:
            raise self.err(f"volume '{self.cur.name}' has no 'end-volume'", line=self.cur.line)
        if not self.defined:
            raise VolfileError("no volume is defined", source=self.source)
        return list(self.defined.values())

    def statement(self, line: str, toks: list[tuple[str, int]]) -> None:
        kw, col = toks[0]
        if kw not in KEYWORDS:
            raise self.err(f"unknown keyword {kw!r} (expected one of {', '.join(KEYWORDS)})",
                           col)
        if kw == "volume":
            self.start_volume(toks)
            return
        cur = self.cur
        if cur is None:
            raise self.err(f"'{kw}' outside a volume (no 'volume NAME' before it)", col)
        if kw == "type":
            if len(toks) != 2:
                raise self.err("'type' takes exactly one word, like protocol/client", col)
            if cur.type is not None:
                raise self.err(f"volume '{cur.name}' has a second 'type' "
                               f"(first on line {cur.type_line})", col)
            cur.type, cur.type_line = self.word(toks[1], "type"), self.lineno
        elif kw == "option":
            self.option(line, toks, cur)
        elif kw == "subvolumes":
            self.subvolumes(toks, cur)
        else:
            if len(toks) != 1:
                raise self.err("unexpected text after 'end-volume'", toks[1][1])
            self.end_volume(cur)

    def start_volume(self, toks: list[tuple[str, int]]) -> None:
        if self.cur is not None:
            raise self.err(f"'volume' inside volume '{self.cur.name}' (line {self.cur.line}): "
                           "missing 'end-volume'", toks[0][1])
        if len(toks) != 2:
            raise self.err("'volume' takes exactly one name", toks[0][1])
        name = self.word(toks[1], "volume name")
        prev = self.defined.get(name)
        if prev is not None:
            raise self.err(f"duplicate volume name '{name}' (first defined on line {prev.line})",
                           toks[1][1])
        self.cur = _Open(name, self.lineno)

    def option(self, line: str, toks: list[tuple[str, int]], cur: _Open) -> None:
        if len(toks) < 2:
            raise self.err("'option' needs a name and a value", toks[0][1])
        key_tok = toks[1]
        key = self.word(key_tok, "option name")
        if key in cur.options:
            raise self.err(f"option '{key}' given twice in volume '{cur.name}' "
                           f"(first on line {cur.option_lines[key]})", key_tok[1])
        value = self.value(line, key_tok[1] - 1 + len(key))
        if value is None:
            raise self.err(f"option '{key}' has no value", key_tok[1])
        cur.options[key] = value
        cur.option_lines[key] = self.lineno

    def value(self, line: str, i: int) -> str | None:
        n = len(line)
        while i < n and line[i].isspace():
            i += 1
        if i == n or line[i] == "#":
            return None
        if line[i] != '"':
            m = _COMMENT.search(line, i)
            return line[i:m.start() if m else n].rstrip()
        start, i = i, i + 1
        out: list[str] = []
        while i < n:
            c = line[i]
            if c == '"':
                rest = line[i + 1:].lstrip()
                if rest and not rest.startswith("#"):
                    raise self.err("unexpected text after a quoted value", n - len(rest) + 1)
                return "".join(out)
            if c == "\\":
                e = line[i + 1:i + 2]
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                    i += 2
                    continue
                if e == "x" and _HEX2.fullmatch(line, i + 2, i + 4):
                    out.append(chr(int(line[i + 2:i + 4], 16)))
                    i += 4
                    continue
                raise self.err("invalid escape in quoted value "
                               "(use \\\\, \\\", \\n, \\t, \\r or \\xHH)", i + 1)
            out.append(c)
            i += 1
        raise self.err("quoted value has no closing '\"'", start + 1)

    def subvolumes(self, toks: list[tuple[str, int]], cur: _Open) -> None:
        if cur.subvolumes is not None:
            raise self.err(f"volume '{cur.name}' has a second 'subvolumes' "
                           f"(first on line {cur.subvolumes_line})", toks[0][1])
        if len(toks) < 2:
            raise self.err("'subvolumes' needs at least one volume name", toks[0][1])
        subs: list[Xlator] = []
        for tok in toks[1:]:
            name, col = self.word(tok, "volume name"), tok[1]
            if name == cur.name:
                raise self.err(f"volume '{name}' names itself in 'subvolumes'", col)
            if any(s.name == name for s in subs):
                raise self.err(f"'subvolumes' names volume '{name}' twice", col)
            xl = self.defined.get(name)
            if xl is None:
                later = self.definition_after(name)
                if later is not None:
                    raise self.err(f"'subvolumes' names volume '{name}' before its definition "
                                   f"on line {later}", col)
                raise self.err(f"'subvolumes' names unknown volume '{name}'", col)
            subs.append(xl)
        cur.subvolumes, cur.subvolumes_line = subs, self.lineno

    def definition_after(self, name: str) -> int | None:
        for n in range(self.lineno, len(self.lines)):
            toks = _tokens(self.lines[n])
            if len(toks) == 2 and toks[0][0] == "volume" and toks[1][0] == name:
                return n + 1
        return None

    def end_volume(self, cur: _Open) -> None:
        if cur.type is None:
            raise self.err(f"volume '{cur.name}' has no 'type'")
        self.defined[cur.name] = Xlator(cur.name, cur.type, cur.options, cur.subvolumes or [],
                                        source=self.source, line=cur.line,
                                        option_lines=cur.option_lines)
        self.cur = None


def parse(text: str, *, source: str = "<volfile>", top: str | None = None) -> Graph:
    """Parse volfile ``text``; ``source`` names it in error messages.

    ``top`` picks the graph's top by name instead of the last volume defined.
    """
    xlators = _Parser(text, source).run()
    if top is not None and not any(x.name == top for x in xlators):
        raise VolfileError(f"top volume '{top}' is not defined", source=source)
    return Graph.from_xlators(xlators, top)


def parse_bytes(data: bytes, *, source: str = "<volfile>", top: str | None = None) -> Graph:
    """Parse UTF-8 volfile bytes (a leading byte-order mark is allowed)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise VolfileError(f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot be decoded",
                           source=source, line=data.count(b"\n", 0, e.start) + 1,
                           column=e.start - line_start + 1) from None
    return parse(text, source=source, top=top)


def parse_file(path: str | os.PathLike[str], *, top: str | None = None) -> Graph:
    """Read and parse a volfile; an unreadable file is a ``VolfileError`` too."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_VOLFILE_BYTES + 1)
    except OSError as e:
        raise VolfileError(f"cannot read volfile: {e.strerror or e}", source=source) from None
    if len(data) > MAX_VOLFILE_BYTES:
        raise VolfileError(f"volfile is larger than {MAX_VOLFILE_BYTES} bytes", source=source)
    return parse_bytes(data, source=source, top=top)
