"""The volfile data model: translators (``Xlator``) wired into a ``Graph``.

A graph is a DAG of named translators. Every subvolume is defined before the
translators that use it, so definition order is a valid bottom-up build order,
and the top (the one the FUSE bridge or the brick server talks to) is the last
one defined unless a graph names another.

Option values are always strings, as in the file; the ``opt_*`` helpers turn
them into typed values and report a bad one naming the volume, the option and,
for a parsed graph, the file and line it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field


class VolfileError(ValueError):
    """A volfile (or a graph or volume description) is not valid.

    ``str()`` is one line an operator can act on, prefixed with ``source:line:``
    when the error has a place in a file. ``line`` and ``column`` are 1-based.
    """

    def __init__(self, message: str, *, source: str | None = None,
                 line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}" if self.source else self.message
        return f"{self.source or '<volfile>'}:{self.line}: {self.message}"


def is_token(s: str) -> bool:
    """Whether ``s`` can be written as a volume name, type or option key.

    Tokens are separated by whitespace and a ``#`` or ``"`` would start a
    comment or a quoted string, so none of these may appear in one.
    """
    return bool(s) and not any(c.isspace() or c in '#"' or not c.isprintable() for c in s)


def check_token(s: str, what: str) -> None:
    """Raise ``VolfileError`` unless ``s`` is a valid token (see ``is_token``)."""
    if not isinstance(s, str) or not is_token(s):
        raise VolfileError(f"invalid {what} {s!r}: must be non-empty, printable, "
                           "without whitespace, '#' or '\"'")


_TRUE = frozenset({"on", "yes", "true", "enable", "1"})
_FALSE = frozenset({"off", "no", "false", "disable", "0"})
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_SIZE_RE = re.compile(r"(\d+)\s*([kmgtp]?)(i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bool(value: str) -> bool:
    """GlusterFS booleans: on/off, yes/no, true/false, enable/disable, 1/0."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError("expected on or off (also yes/no, true/false, enable/disable, 1/0)")


def parse_size(value: str) -> int:
    """A byte count with an optional binary unit: ``4096``, ``128KB``, ``1MiB``, ``2G``."""
    m = _SIZE_RE.fullmatch(value.strip())
    if m is None:
        raise ValueError("expected a size in bytes with an optional unit (KB, MB, GB, TB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


@dataclass(eq=True)
class Xlator:
    """One translator: a named layer of ``type`` with options and subvolumes.

    ``subvolumes`` holds the child ``Xlator`` objects themselves, in order; a
    child may be shared by several parents. ``line``/``option_lines`` remember
    where a parsed translator came from, for error messages only (they take no
    part in equality).
    """

    name: str
    type: str
    options: dict[str, str] = field(default_factory=dict)
    subvolumes: list[Xlator] = field(default_factory=list)
    source: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)
    option_lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def subvolume_names(self) -> list[str]:
        return [s.name for s in self.subvolumes]

    def signature(self) -> tuple[str, str, tuple[tuple[str, str], ...], tuple[str, ...]]:
        """Everything that defines this translator, naming children instead of nesting."""
        return (self.name, self.type, tuple(sorted(self.options.items())),
                tuple(self.subvolume_names))

    # -- typed option access ---------------------------------------------
    def _bad(self, key: str, value: str, expected: str) -> VolfileError:
        return VolfileError(
            f"volume '{self.name}': invalid value {value!r} for option '{key}': {expected}",
            source=self.source, line=self.option_lines.get(key, self.line))

    def opt(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def opt_str(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def opt_int(self, key: str, default: int, *, min: int | None = None,
                max: int | None = None) -> int:
        """The option as a decimal integer within ``[min, max]``, or ``default`` if absent."""
        raw = self.options.get(key)
        if raw is None:
            return default
        v = int(raw) if _INT_RE.fullmatch(raw) else None
        if v is None or (min is not None and v < min) or (max is not None and v > max):
            raise self._bad(key, raw, "expected an integer" + _bounds(min, max))
        return v

    def opt_float(self, key: str, default: float, *, min: float | None = None,
                  max: float | None = None) -> float:
        """The option as a finite number within ``[min, max]``, or ``default`` if absent."""
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            v: float | None = float(raw.strip())
        except ValueError:
            v = None
        if (v is None or not math.isfinite(v) or (min is not None and v < min)
                or (max is not None and v > max)):
            raise self._bad(key, raw, "expected a number" + _bounds(min, max))
        assert v is not None
        return v

    def opt_bool(self, key: str, default: bool) -> bool:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            return parse_bool(raw)
        except ValueError as e:
            raise self._bad(key, raw, str(e)) from None

    def opt_choice(self, key: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices`` (matched case-insensitively, returned as spelled there)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        folded = raw.strip().lower()
        for c in choices:
            if c.lower() == folded:
                return c
        raise self._bad(key, raw, "expected one of " + ", ".join(choices))

    def opt_size(self, key: str, default: int) -> int:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            return parse_size(raw)
        except ValueError as e:
            raise self._bad(key, raw, str(e)) from None

    def opt_list(self, key: str, default: Sequence[str] = (), sep: str = ",") -> list[str]:
        """A ``sep``-separated list with blanks dropped (e.g. ``afr-pending-xattr``)."""
        raw = self.options.get(key)
        if raw is None:
            return list(default)
        return [p.strip() for p in raw.split(sep) if p.strip()]


@dataclass(eq=False)
class Graph:
    """A validated translator graph: ``xlators`` in definition order, and its ``top``.

    Invariants (checked on construction): names are unique valid tokens, every
    translator has a type, each subvolume is the graph's own object of that name
    and is defined before its user, and ``top`` is one of the translators.
    """

    top: Xlator
    xlators: dict[str, Xlator]

    def __post_init__(self) -> None:
        seen: dict[str, Xlator] = {}
        for key, xl in self.xlators.items():
            if key != xl.name:
                raise VolfileError(f"graph key {key!r} does not match volume name {xl.name!r}")
            check_token(xl.name, "volume name")
            check_token(xl.type, f"type of volume '{xl.name}'")
            for k, v in xl.options.items():
                check_token(k, f"option name in volume '{xl.name}'")
                if not isinstance(v, str):
                    raise VolfileError(f"volume '{xl.name}': option '{k}' is not a string")
            names: set[str] = set()
            for sub in xl.subvolumes:
                if seen.get(sub.name) is not sub:
                    raise VolfileError(f"volume '{xl.name}' has subvolume '{sub.name}' that is "
                                       "not defined before it in this graph")
                if sub.name in names:
                    raise VolfileError(f"volume '{xl.name}' names subvolume '{sub.name}' twice")
                names.add(sub.name)
            seen[xl.name] = xl
        if self.xlators.get(self.top.name) is not self.top:
            raise VolfileError(f"top volume '{self.top.name}' is not part of the graph")

    @classmethod
    def from_xlators(cls, xlators: Iterable[Xlator], top: str | None = None) -> Graph:
        """Build from translators in definition order; the top defaults to the last."""
        d: dict[str, Xlator] = {}
        for xl in xlators:
            if xl.name in d:
                raise VolfileError(f"duplicate volume name '{xl.name}'")
            d[xl.name] = xl
        if not d:
            raise VolfileError("a graph needs at least one volume")
        name = top if top is not None else next(reversed(d))
        if name not in d:
            raise VolfileError(f"top volume '{name}' is not defined")
        return cls(d[name], d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (self.top.name == other.top.name
                and [x.signature() for x in self.xlators.values()]
                == [x.signature() for x in other.xlators.values()])

    def __repr__(self) -> str:
        return f"<Graph top={self.top.name!r} volumes={list(self.xlators)!r}>"

    def __getitem__(self, name: str) -> Xlator:
        return self.xlators[name]

    def get(self, name: str) -> Xlator | None:
        return self.xlators.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.xlators

    def __iter__(self) -> Iterator[Xlator]:
        return iter(self.xlators.values())

    def __len__(self) -> int:
        return len(self.xlators)

    @property
    def name(self) -> str:
        """The top's name: the volume name in a client volfile."""
        return self.top.name

    def by_type(self, type: str) -> list[Xlator]:
        """Translators of ``type`` in definition order (bricks come out in brick order)."""
        return [x for x in self.xlators.values() if x.type == type]

    def parents(self, name: str) -> list[Xlator]:
        return [x for x in self.xlators.values() if any(s.name == name for s in x.subvolumes)]

    def walk(self) -> Iterator[Xlator]:
        """Translators reachable from the top, each once, parents before children."""
        seen: set[str] = set()
        stack = [self.top]
        while stack:
            xl = stack.pop()
            if xl.name in seen:
                continue
            seen.add(xl.name)
            yield xl
            stack.extend(reversed(xl.subvolumes))

    def copy(self) -> Graph:
        """A deep copy (options and wiring), sharing kept as it was."""
        new: dict[str, Xlator] = {}
        for xl in self.xlators.values():
            new[xl.name] = Xlator(xl.name, xl.type, dict(xl.options),
                                  [new[s.name] for s in xl.subvolumes],
                                  source=xl.source, line=xl.line,
                                  option_lines=dict(xl.option_lines))
        return Graph(new[self.top.name], new)
