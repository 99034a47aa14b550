"""Client and brick volfiles generated from a volume description."""

from __future__ import annotations

import pathlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyglfs.client.createbehind import CreateBehind
from pyglfs.client.graph import build_graph
from pyglfs.volfiles.generator import (
    BrickSpec,
    VolumeSpec,
    brick_graph,
    brick_volfile,
    client_graph,
    client_volfile,
    generate,
    with_options,
    with_ports,
)
from pyglfs.volfiles.model import Graph, VolfileError
from pyglfs.volfiles.options import VOLUME_OPTIONS, validate_option
from pyglfs.volfiles.parser import parse, parse_file

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "volfiles" / "examples"
VID = "6f1c1a52-0a4e-4b8e-9d7a-3c2b1f0e5d4a"


def spec(n: int = 2, replica: int = 2, **kw: object) -> VolumeSpec:
    bricks = [BrickSpec(f"127.0.0.{2 + i % 2}", 49750 + i, f"/bricks/b{i}") for i in range(n)]
    return VolumeSpec("gvol0", VID, replica, bricks, **kw)  # type: ignore[arg-type]


def test_replica2_client_volfile() -> None:
    s = spec(options={"cluster.quorum-type": "AUTO", "network.ping-timeout": "5",
                      "diagnostics.client-log-level": "debug"},
             username="u-1", password="p-1")
    g = parse(client_volfile(s), source="gvol0.vol")
    assert g == client_graph(s)
    assert list(g.xlators) == ["gvol0-client-0", "gvol0-client-1", "gvol0-replicate-0",
                               "gvol0-write-behind", "gvol0-nl-cache",
                               "gvol0-md-cache", "gvol0"]
    c1 = g["gvol0-client-1"]
    assert c1.type == "protocol/client"
    assert c1.options == {"remote-host": "127.0.0.3", "remote-port": "49751",
                          "remote-subvolume": "/bricks/b1", "transport-type": "tcp",
                          "username": "u-1", "password": "p-1", "ping-timeout": "5"}
    rep = g["gvol0-replicate-0"]
    assert rep.type == "cluster/replicate"
    assert rep.options == {"afr-pending-xattr": "gvol0-client-0,gvol0-client-1",
                           "quorum-type": "auto"}
    assert rep.subvolume_names == ["gvol0-client-0", "gvol0-client-1"]
    assert g.top.name == "gvol0" and g.top.type == "debug/io-stats"
    wb = g["gvol0-write-behind"]
    assert wb.type == "performance/write-behind" and wb.subvolumes == [rep]
    assert wb.options == {}
    nlc = g["gvol0-nl-cache"]
    assert nlc.type == "performance/nl-cache" and nlc.subvolumes == [wb]
    assert nlc.options == {"cache-invalidation": "on", "nl-cache-timeout": "600"}
    mdc = g["gvol0-md-cache"]
    assert mdc.type == "performance/md-cache" and mdc.subvolumes == [nlc]
    assert mdc.options == {"cache-invalidation": "on", "md-cache-timeout": "600"}
    assert g.top.options == {"log-level": "DEBUG"} and g.top.subvolumes == [mdc]


def test_defaults_without_credentials_or_options() -> None:
    g = client_graph(spec())
    c0 = g["gvol0-client-0"]
    assert "username" not in c0.options and "password" not in c0.options
    assert c0.opt_float("ping-timeout", 0) == 10.0
    assert g["gvol0-replicate-0"].options.keys() == {"afr-pending-xattr"}


def test_distributed_replicate_and_plain_layouts() -> None:
    g = client_graph(spec(6, 3, options={"cluster.min-free-disk": "5%"}))
    reps = g.by_type("cluster/replicate")
    assert [r.name for r in reps] == ["gvol0-replicate-0", "gvol0-replicate-1"]
    assert reps[1].subvolume_names == ["gvol0-client-3", "gvol0-client-4", "gvol0-client-5"]
    dht = g["gvol0-dht"]
    assert dht.type == "cluster/distribute" and dht.subvolumes == reps
    assert dht.options == {"min-free-disk": "5%"}
    assert g["gvol0-write-behind"].subvolumes == [dht]
    single = client_graph(spec(1, 1))
    assert list(single.xlators) == ["gvol0-client-0", "gvol0-write-behind", "gvol0-nl-cache",
                                    "gvol0-md-cache", "gvol0"]
    plain = client_graph(spec(3, 1))
    assert plain["gvol0-dht"].subvolume_names == ["gvol0-client-0", "gvol0-client-1",
                                                  "gvol0-client-2"]
    assert not plain.by_type("cluster/replicate")


def test_performance_translators_only_when_switched_on() -> None:
    g = client_graph(spec(options={"performance.io-cache": "on", "performance.cache-size": "64MB",
                                   "performance.write-behind": "yes",
                                   "performance.read-ahead-page-count": "8"}))
    chain = [x.name for x in g.walk()][:5]
    assert chain == ["gvol0", "gvol0-md-cache", "gvol0-nl-cache", "gvol0-io-cache",
                     "gvol0-write-behind"]
    assert g["gvol0-io-cache"].options == {"cache-size": "64MB"}
    assert "gvol0-read-ahead" not in g
    assert g["gvol0-write-behind"].subvolume_names == ["gvol0-replicate-0"]


def test_write_behind_on_by_default_and_switched_off() -> None:
    on = client_graph(spec(options={"performance.write-behind-window-size": "2MB"}))
    assert on["gvol0-write-behind"].options == {"cache-size": "2MB"}
    off = client_graph(spec(options={"performance.write-behind": "off"}))
    assert not off.by_type("performance/write-behind")
    assert off["gvol0-nl-cache"].subvolume_names == ["gvol0-replicate-0"]


def test_create_behind_is_a_write_behind_option_and_builds_no_layer_when_off() -> None:
    def layers(g: Graph) -> list[str]:
        top = build_graph(g, client_id="t")
        names = []
        while True:
            names.append(type(top).__name__)
            if len(top.children) != 1:
                return names
            top = top.child

    off = client_graph(spec(options={"performance.create-behind": "off"}))
    assert off["gvol0-write-behind"].options == {"create-behind": "off"}
    assert CreateBehind.__name__ not in layers(off)
    on = layers(client_graph(spec()))
    assert on[on.index("WriteBehind") + 1] == CreateBehind.__name__
    with pytest.raises(VolfileError):
        validate_option("performance.create-behind", "sometimes")


def test_md_cache_options() -> None:
    off = client_graph(spec(options={"performance.stat-prefetch": "off"}))
    assert not off.by_type("performance/md-cache")
    assert off.top.subvolume_names == ["gvol0-nl-cache"]
    no_inval = client_graph(spec(options={"features.cache-invalidation": "off"}))
    assert no_inval["gvol0-md-cache"].options == {"cache-invalidation": "off",
                                                  "md-cache-timeout": "1"}
    told = client_graph(spec(options={"features.cache-invalidation": "no",
                                      "performance.md-cache-timeout": "5"}))
    assert told["gvol0-md-cache"].options == {"cache-invalidation": "off",
                                              "md-cache-timeout": "5"}
    with pytest.raises(VolfileError, match="md-cache-timeout"):
        client_graph(spec(options={"performance.md-cache-timeout": "601"}))


def test_nl_cache_options() -> None:
    off = client_graph(spec(options={"performance.nl-cache": "off"}))
    assert not off.by_type("performance/nl-cache")
    assert off["gvol0-md-cache"].subvolume_names == ["gvol0-write-behind"]
    no_inval = client_graph(spec(options={"features.cache-invalidation": "off",
                                          "performance.nl-cache-limit": "1MB"}))
    assert no_inval["gvol0-nl-cache"].options == {"cache-invalidation": "off",
                                                  "nl-cache-timeout": "1",
                                                  "nl-cache-limit": "1MB"}
    told = client_graph(spec(options={"performance.nl-cache-timeout": "30"}))
    assert told["gvol0-nl-cache"].options == {"cache-invalidation": "on",
                                              "nl-cache-timeout": "30"}
    with pytest.raises(VolfileError, match="nl-cache-timeout"):
        client_graph(spec(options={"performance.nl-cache-timeout": "601"}))
    with pytest.raises(VolfileError, match="nl-cache-limit"):
        client_graph(spec(options={"performance.nl-cache-limit": "lots"}))


def test_brick_volfile() -> None:
    s = spec(options={"storage.reserve": "2", "auth.allow": "127.0.0.*"},
             username="u", password="p")
    g = parse(brick_volfile(s, 1))
    assert g == brick_graph(s, 1)
    posix = g["gvol0-posix"]
    assert posix.type == "storage/posix"
    assert posix.options == {"directory": "/bricks/b1", "volume-id": VID, "reserve": "2"}
    assert g["/bricks/b1"].type == "debug/io-stats"
    srv = g.top
    assert srv.name == "gvol0-server" and srv.type == "protocol/server"
    assert srv.subvolume_names == ["/bricks/b1"]
    assert srv.options["transport.socket.listen-port"] == "49751"
    assert srv.options["transport.socket.bind-address"] == "127.0.0.3"
    assert srv.options["auth.login./bricks/b1.allow"] == "u"
    assert srv.options["auth.login.u.password"] == "p"
    assert srv.options["auth.addr./bricks/b1.allow"] == "127.0.0.*"
    open_brick = brick_graph(spec(), 0).top
    assert open_brick.options["auth.addr./bricks/b0.allow"] == "*"
    assert not any(k.startswith("auth.login") for k in open_brick.options)
    with pytest.raises(VolfileError, match="has no brick 2"):
        brick_graph(spec(), 2)


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"name": "bad name"}, "invalid volume name 'bad name'"),
    ({"name": "-x"}, "invalid volume name"),
    ({"volume_id": "nope"}, "invalid volume id 'nope'"),
    ({"replica_count": 0}, "invalid replica count 0"),
    ({"replica_count": 3}, "has 2 bricks: need a non-zero multiple of the replica count 3"),
    ({"bricks": []}, "has 0 bricks"),
    ({"bricks": [BrickSpec("h", 0, "/b"), BrickSpec("h", 1, "/c")]}, "invalid port 0 of brick 0"),
    ({"bricks": [BrickSpec("h", 1, "b"), BrickSpec("h", 2, "/c")]}, "must be absolute"),
    ({"bricks": [BrickSpec("h", 1, "/b c"), BrickSpec("h", 2, "/c")]}, "invalid path of brick 0"),
    ({"bricks": [BrickSpec("h", 1, "/b"), BrickSpec("h", 2, "/b")]}, "h:/b is listed twice"),
    ({"username": "u"}, "username and password go together"),
    ({"username": "u u", "password": "p"}, "invalid username"),
    ({"options": {"cluster.quorum-typo": "auto"}},
     "unknown volume option 'cluster.quorum-typo'; did you mean cluster.quorum-type"),
    ({"options": {"cluster.quorum-type": "most"}},
     "invalid value 'most' for cluster.quorum-type: expected one of none, auto, fixed"),
    ({"options": {"network.ping-timeout": "-1"}}, "expected a number >= 0"),
    ({"options": {"cluster.quorum-count": "+-1"}}, "expected an integer >= 1"),
])
def test_bad_volume_descriptions(kw: dict[str, object], fragment: str) -> None:
    base: dict[str, object] = {"name": "gvol0", "volume_id": VID, "replica_count": 2,
                               "bricks": spec().bricks}
    s = VolumeSpec(**(base | kw))  # type: ignore[arg-type]
    with pytest.raises(VolfileError) as ei:
        client_volfile(s)
    assert fragment in str(ei.value)


def test_option_table_defaults_are_valid() -> None:
    for key, opt in VOLUME_OPTIONS.items():
        assert validate_option(key, opt.default) is not None, key
    assert validate_option("cluster.eager-lock", "Enable") == "on"
    assert validate_option("storage.reserve", " 5 ") == "5"
    assert validate_option("cluster.min-free-disk", "2GB") == "2GB"
    with pytest.raises(VolfileError, match="expected a percentage"):
        validate_option("cluster.min-free-disk", "lots")


def test_with_ports_rewrites_examples() -> None:
    g = parse_file(EXAMPLES / "replica2.vol")
    h = with_ports(g, {0: 40001, "gvol0-client-1": 40002})
    assert [c.opt_int("remote-port", 0) for c in h.by_type("protocol/client")] == [40001, 40002]
    assert g["gvol0-client-0"].options["remote-port"] == "49750"
    assert parse(generate(h)) == h
    with pytest.raises(VolfileError, match="no protocol/client number 2"):
        with_ports(g, {2: 1})
    with pytest.raises(VolfileError, match="no protocol/client volume 'gvol0'"):
        with_ports(g, {"gvol0": 1})
    with pytest.raises(VolfileError, match="invalid port 70000"):
        with_ports(g, {0: 70000})
    auth = with_options(g, {"gvol0-client-0": {"username": "u"}})
    assert auth["gvol0-client-0"].options["username"] == "u"
    with pytest.raises(VolfileError, match="no volume 'x'"):
        with_options(g, {"x": {}})


def test_example_matches_generator_layout() -> None:
    s = VolumeSpec("gvol0", VID, 2, [BrickSpec("127.0.0.2", 49750, "/bricks/b1"),
                                     BrickSpec("127.0.0.3", 49751, "/bricks/b2")],
                   {"cluster.quorum-type": "none", "performance.stat-prefetch": "off",
                    "performance.nl-cache": "off"})
    assert parse_file(EXAMPLES / "replica2.vol") == client_graph(s)
    one = VolumeSpec("single", VID, 1, [BrickSpec("127.0.0.2", 49750, "/bricks/single")],
                     {"performance.stat-prefetch": "off", "performance.nl-cache": "off"})
    assert parse_file(EXAMPLES / "single.vol") == client_graph(one)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.data())
def test_generated_volfiles_parse_with_expected_shape(replica: int, sets: int,
                                                      data: st.DataObject) -> None:
    n = replica * sets
    ports = data.draw(st.lists(st.integers(1, 65535), min_size=n, max_size=n))
    s = VolumeSpec("v_1", str(uuid.uuid4()), replica,
                   [BrickSpec(f"127.0.0.{i + 2}", p, f"/b/{i}") for i, p in enumerate(ports)])
    g = parse(client_volfile(s))
    assert g == client_graph(s)
    clients = g.by_type("protocol/client")
    assert [c.opt_int("remote-port", 0) for c in clients] == ports
    assert len(g.by_type("cluster/replicate")) == (sets if replica > 1 else 0)
    assert len(g.by_type("cluster/distribute")) == (1 if sets > 1 else 0)
    assert g.top.name == "v_1" and {x.name for x in g.walk()} == set(g.xlators)
    for i in range(n):
        b = parse(brick_volfile(s, i))
        assert b["v_1-posix"].options["directory"] == f"/b/{i}"
