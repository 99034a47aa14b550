"""The compiled per-op validators (brickops.VALIDATORS) accept and refuse exactly
what a plain reading of the OPS table does, for every op and every argument."""

from __future__ import annotations

from typing import Any

import pytest

from pyglfs.rpc import brickops
from pyglfs.rpc.brickops import OPS, ArgError, validate, validate_compound

GFID = b"g" * 16


def reference(op: str, args: Any) -> bool:
    """OPS read literally: a map, no unknown args, every required arg present,
    every given arg passing its check (an optional one may be None)."""
    schema = OPS[op]
    if type(args) is not dict:
        return False
    if any(k not in schema for k in args):
        return False
    for key, check in schema.items():
        if key in args:
            if not check(args[key]):
                return False
        elif not getattr(check, "optional", False):
            return False
    return True


# One value that passes each check, found by trying these in order.
CANDIDATES: list[Any] = [
    GFID, 0, 7, True, b"name", "trusted.x", {"trusted.afr.dirty": b"\0" * 12},
    {"domain": "d", "owner": b"o"}, "rd", "getlk", [["stat", {"gfid": GFID}]],
]
# Values that some check or other refuses.
WRONG: list[Any] = [
    None, -1, 1.5, "s" * 5000, b"", b"x" * 17, "0" * 16, 1 << 70, [], {}, True, False,
    {"trusted.afr.dirty": b"short"}, {1: b"\0" * 12}, {"k": b"\0" * 12, "x": 3}, "maybe",
    b"x" * 5000, bytearray(16), memoryview(GFID),
]


def good_value(check: Any) -> Any:
    inner = getattr(check, "inner", check)
    for v in CANDIDATES:
        if inner(v):
            return v
    raise AssertionError(f"no candidate passes {check}")


def good_args(op: str) -> dict[str, Any]:
    return {k: good_value(c) for k, c in OPS[op].items()}


def required(op: str) -> list[str]:
    return [k for k, c in OPS[op].items() if not getattr(c, "optional", False)]


def agrees(op: str, args: Any) -> None:
    want = reference(op, args)
    try:
        out = validate(op, args)
    except ArgError as e:
        assert not want, f"{op} refused {args!r}: {e}"
        assert str(e).startswith(f"{op}: ")
    else:
        assert want, f"{op} accepted {args!r}"
        assert out is args


@pytest.mark.parametrize("op", sorted(OPS))
def test_compiled_validator_matches_the_table(op: str) -> None:
    full = good_args(op)
    agrees(op, full)
    agrees(op, {k: full[k] for k in required(op)})
    for key in OPS[op]:
        less = dict(full)
        del less[key]
        agrees(op, less)
        for bad in WRONG:
            agrees(op, {**full, key: bad})
            agrees(op, {**{k: full[k] for k in required(op)}, key: bad})
    agrees(op, {**full, "extra": 1})
    agrees(op, {**{k: full[k] for k in required(op)}, "extra": 1})
    agrees(op, {**full, b"gfid": GFID})
    for not_a_map in (None, [], [("gfid", GFID)], "args", 3):
        agrees(op, not_a_map)


def test_messages_name_the_argument() -> None:
    with pytest.raises(ArgError, match="missing argument 'name'"):
        validate("lookup", {"pgfid": GFID})
    with pytest.raises(ArgError, match="bad value for 'pgfid'"):
        validate("lookup", {"pgfid": b"short", "name": b"a"})
    with pytest.raises(ArgError, match="unknown argument 'extra'"):
        validate("lookup", {"pgfid": GFID, "name": b"a", "extra": 1})
    with pytest.raises(ArgError, match="bad value for 'flags'"):
        validate("create", {**good_args("create"), "flags": -1})
    with pytest.raises(ArgError, match="arguments must be a map"):
        validate("stat", [GFID])
    with pytest.raises(KeyError):
        validate("format_disk", {})


def test_every_op_has_a_validator_and_inline_tests_match_their_functions() -> None:
    for op in OPS:
        assert brickops.VALIDATORS[op].__name__ == f"validate_{op}"
        assert brickops.VALIDATORS[op] is brickops.VALIDATORS[op]  # compiled once
    with pytest.raises(KeyError):
        brickops.VALIDATORS["format_disk"]
    assert set(brickops.VALIDATORS) == set(OPS)
    for check, expr in brickops._INLINE.items():
        for v in CANDIDATES + WRONG:
            assert eval(expr, {}, {"v": v}) == check(v), (expr, v)  # noqa: S307


def test_compound_sub_ops_use_the_compiled_validators() -> None:
    ops = validate_compound({"ops": [["stat", {"gfid": GFID}],
                                     ["xattrop", {"gfid": GFID, "xattrop": {}}]]})
    assert [op for op, _ in ops] == ["stat", "xattrop"]
    with pytest.raises(ArgError, match="sub-op 1: xattrop: bad value for 'gfid'"):
        validate_compound({"ops": [["stat", {"gfid": GFID}],
                                   ["xattrop", {"gfid": b"x", "xattrop": {}}]]})
