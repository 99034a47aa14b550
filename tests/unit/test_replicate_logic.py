"""Pure parts of replicate: quorum, changelog encoding, read choice, graph building."""

from __future__ import annotations

import errno

import pytest

from pyglfs.client.createbehind import CreateBehind
from pyglfs.client.layer import Layer
from pyglfs.client.mdcache import MdCache
from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import Quorum, Replicate
from pyglfs.client.replicate.changelog import (
    DATA,
    ENTRY,
    METADATA,
    accused,
    add,
    decode,
    delta,
    encode,
)
from pyglfs.client.replicate.fanout import pick_error
from pyglfs.client.replicate.readsel import InodeTable
from pyglfs.rpc.brickops import AFR_PREFIX
from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_graph
from pyglfs.volfiles.model import Graph, VolfileError, Xlator
from pyglfs.volfiles.parser import parse

NAMES = [AFR_PREFIX + "v-client-0", AFR_PREFIX + "v-client-1"]


@pytest.mark.parametrize(("qtype", "count", "n", "up", "met"), [
    ("auto", 1, 2, 0b01, True), ("auto", 1, 2, 0b10, False), ("auto", 1, 2, 0b11, True),
    ("auto", 1, 2, 0b00, False), ("auto", 1, 3, 0b110, True), ("auto", 1, 3, 0b100, False),
    ("auto", 1, 4, 0b0011, True), ("auto", 1, 4, 0b1100, False),
    ("none", 1, 2, 0b10, True), ("none", 1, 2, 0, False),
    ("fixed", 2, 3, 0b101, True), ("fixed", 2, 3, 0b100, False),
])
def test_quorum(qtype: str, count: int, n: int, up: int, met: bool) -> None:
    assert Quorum(n, qtype, count).met(up) is met


def test_quorum_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Quorum(2, "majority")
    with pytest.raises(ValueError):
        Quorum(2, "fixed", 3)


def test_changelog_encoding() -> None:
    assert decode(encode(1, -2, 3)) == (1, -2, 3)
    assert delta(1 << DATA | 1 << ENTRY, 2) == encode(2, 0, 2)
    xop: dict[str, bytes] = {}
    add(xop, "x", delta(1 << DATA))
    add(xop, "x", delta(1 << METADATA | 1 << DATA))
    assert decode(xop["x"]) == (2, 1, 0)
    assert decode(b"bad") == (1, 1, 1)


def test_accused_ignores_self_blame() -> None:
    xattrs = {0: {NAMES[0]: encode(5, 0, 0), NAMES[1]: encode(0, 1, 0)}, 1: {}}
    masks = accused(xattrs, NAMES)
    assert masks == [0, 0b10, 0]
    both = accused({0: {NAMES[1]: encode(1, 0, 0)}, 1: {NAMES[0]: encode(1, 0, 0)}}, NAMES)
    assert both[DATA] == 0b11


def test_read_choice_avoids_blamed_and_sticks() -> None:
    t = InodeTable(2, limit=16)
    gfid = b"\x00" * 15 + b"\x07"
    info = t.learn(gfid, [0b10, 0, 0], True)
    assert t.order(gfid, info, DATA, 0b11) == [0]
    assert t.order(gfid, info, DATA, 0b10) == []
    first = t.order(gfid, info, METADATA, 0b11)
    assert sorted(first) == [0, 1]
    assert t.order(gfid, info, METADATA, 0b11)[0] == first[0]
    t.blame(gfid, 1 << METADATA, 1 << first[0])
    assert t.order(gfid, info, METADATA, 0b11) == [1 - first[0]]


def test_inode_table_is_bounded() -> None:
    t = InodeTable(2, limit=16)
    for i in range(100):
        t.learn(i.to_bytes(16, "big"), [0, 0, 0], False)
    assert len(t) == 16
    assert t.get((0).to_bytes(16, "big")) is None
    assert t.get((99).to_bytes(16, "big")) is not None


def test_pick_error_prefers_answers() -> None:
    e = pick_error({0: OSError(errno.ENOTCONN, "x"), 1: OSError(errno.ENOSPC, "y")})
    assert e.errno == errno.ENOSPC
    e = pick_error({0: OSError(errno.EEXIST, "x"), 1: OSError(errno.EEXIST, "y")})
    assert e.errno == errno.EEXIST


def test_replicate_pending_names_default_to_children() -> None:
    kids = [Layer("gv-client-0"), Layer("gv-client-1")]
    rep = Replicate("gv-replicate-0", kids)
    assert rep.names == [AFR_PREFIX + "gv-client-0", AFR_PREFIX + "gv-client-1"]
    assert rep.quorum.type == "auto"
    with pytest.raises(ValueError):
        Replicate("r", [Layer("a")], pending_xattrs=["a", "b"])


def _spec(**options: str) -> VolumeSpec:
    return VolumeSpec("gv", "6a1e6c55-9f61-4a49-9f1c-6f3c3f7a8a01", 2,
                      [BrickSpec("127.0.0.2", 49750, "/b/1"), BrickSpec("127.0.0.3", 49751,
                                                                       "/b/2")],
                      options=dict(options))


def test_graph_from_generated_volfile() -> None:
    from pyglfs.client.graph import build_graph
    from pyglfs.client.nlcache import NlCache
    from pyglfs.client.writebehind import WriteBehind

    graph = client_graph(_spec(**{"cluster.quorum-type": "fixed", "cluster.quorum-count": "2",
                                  "network.ping-timeout": "3",
                                  "cluster.post-op-delay-secs": "0"}))
    top = build_graph(graph, client_id="me")
    assert type(top) is Layer and top.name == "gv"
    mdc = top.child
    assert isinstance(mdc, MdCache) and mdc.invalidation and mdc.timeout == 600
    nlc = mdc.child
    assert isinstance(nlc, NlCache) and nlc.invalidation and nlc.timeout == 600
    wb = nlc.child
    assert isinstance(wb, WriteBehind) and wb.name == "gv-write-behind" and wb.queue
    cb = wb.child
    assert isinstance(cb, CreateBehind) and cb.name == "gv-write-behind-create-behind"
    rep = cb.child
    assert isinstance(rep, Replicate) and rep.name == "gv-replicate-0"
    assert rep.quorum.type == "fixed" and rep.quorum.count == 2
    assert rep.locks.delay == 0
    assert rep.names == [AFR_PREFIX + "gv-client-0", AFR_PREFIX + "gv-client-1"]
    pcs = rep.children
    assert all(isinstance(c, ProtocolClient) for c in pcs)
    pc = pcs[1]
    assert isinstance(pc, ProtocolClient)
    assert (pc.host, pc.port, pc.brick_path) == ("127.0.0.3", 49751, "/b/2")
    assert pc.rpc.ping_timeout == 3.0 and pc.rpc.volume == "gv"
    assert pc.parent is rep and rep.parent is cb and cb.parent is wb and wb.parent is nlc
    assert nlc.parent is mdc
    assert mdc.parent is top


def test_graph_example_volfile_and_errors() -> None:
    from pyglfs.client.graph import build_graph

    text = """
volume v-client-0
    type protocol/client
    option remote-host 127.0.0.2
    option remote-subvolume /b
end-volume
volume v-client-1
    type protocol/client
    option remote-host 127.0.0.3
    option remote-subvolume /b
    option remote-port 4000
end-volume
volume v-replicate-0
    type cluster/replicate
    option afr-pending-xattr v-client-0,v-client-1
    subvolumes v-client-0 v-client-1
end-volume
volume v-dht
    type cluster/distribute
    subvolumes v-replicate-0
end-volume
volume v
    type debug/io-stats
    subvolumes v-dht
end-volume
"""
    with pytest.raises(VolfileError, match="v-dht.*not supported"):
        build_graph(parse(text), client_id="me")
    rep = build_graph(parse(text, top="v-replicate-0"), client_id="me")
    assert isinstance(rep, Replicate) and rep.quorum.type == "auto"
    assert rep.children[1].port == 4000  # type: ignore[attr-defined]
    middle = text.replace("type cluster/replicate", "type performance/io-cache").replace(
        "type cluster/distribute", "type cluster/replicate")
    with pytest.raises(VolfileError, match="v-replicate-0.*performance/io-cache"):
        build_graph(parse(middle, top="v-dht"), client_id="me")

    c = Xlator("c", "protocol/client", {"remote-host": "h"})
    with pytest.raises(VolfileError, match="remote-subvolume"):
        build_graph(Graph.from_xlators([c]), client_id="me")
    a = Xlator("a", "protocol/client", {"remote-host": "h", "remote-subvolume": "/b"})
    r = Xlator("r", "cluster/replicate", {"afr-pending-xattr": "a,b,c"}, [a])
    with pytest.raises(VolfileError, match="afr-pending-xattr"):
        build_graph(Graph.from_xlators([a, r]), client_id="me")
    r2 = Xlator("r", "cluster/replicate", {"quorum-type": "sometimes"}, [a])
    with pytest.raises(VolfileError, match="quorum-type"):
        build_graph(Graph.from_xlators([a, r2]), client_id="me")
