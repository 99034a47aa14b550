"""Mount option strings and mount sources as mount(8), fstab and kubelet pass them."""

from __future__ import annotations

import logging

import pytest

from pyglfs.client.options import (
    MountOptionError,
    MountOptions,
    MountSource,
    parse_mount_options,
    parse_source,
)


def test_defaults() -> None:
    for empty in (None, "", ",,"):
        o = parse_mount_options(empty)
        assert o == MountOptions()
    o = MountOptions()
    assert (o.read_only, o.volfile, o.log_file, o.log_level, o.auto_unmount) == (
        False, None, None, "INFO", False)
    assert (o.attribute_timeout, o.entry_timeout, o.negative_timeout) == (1.0, 1.0, 0.0)
    assert o.volfile_server_port == 24750 and o.backup_volfile_servers == []
    assert o.allow_other and o.default_permissions
    assert o.log_level_number == logging.INFO


def test_every_option() -> None:
    o = parse_mount_options(
        "ro,volfile=/etc/pyglfs/gvol0.vol,log-file=/var/log/pyglfs/m.log,log-level=debug,"
        "auto_unmount,attribute-timeout=2.5,entry-timeout=0,negative-timeout=1e1,"
        "volfile-server-port=24007,backup-volfile-servers=node2:10.0.0.3,allow_other,"
        "default_permissions")
    assert o.read_only and o.auto_unmount
    assert o.volfile == "/etc/pyglfs/gvol0.vol"
    assert o.log_file == "/var/log/pyglfs/m.log"
    assert o.log_level == "DEBUG" and o.log_level_number == logging.DEBUG
    assert (o.attribute_timeout, o.entry_timeout, o.negative_timeout) == (2.5, 0.0, 10.0)
    assert o.volfile_server_port == 24007
    assert o.backup_volfile_servers == ["node2", "10.0.0.3"]
    assert o.ignored == []


def test_log_levels_any_case() -> None:
    assert parse_mount_options("log-level=TrAcE").log_level_number == 5
    assert parse_mount_options("log-level=WARNING").log_level == "WARNING"
    none = parse_mount_options("log-level=none")
    assert none.log_level == "NONE" and none.log_level_number is None


def test_later_options_win_and_quotes_hold_commas() -> None:
    assert not parse_mount_options("ro,rw").read_only
    assert parse_mount_options("rw,ro").read_only
    assert parse_mount_options("log-level=error,log-level=info").log_level == "INFO"
    assert parse_mount_options('log-file="/var/log/a,b.log",ro').log_file == "/var/log/a,b.log"


def test_generic_options_are_ignored() -> None:
    generic = ("_netdev,defaults,noauto,auto,nofail,user,nouser,dev,nodev,suid,nosuid,exec,"
               "noexec,x-systemd.automount,x-mount.mkdir=0755,user=alice,relatime")
    o = parse_mount_options(generic + ",rw")
    assert o.ignored == generic.split(",")
    assert o == MountOptions(ignored=o.ignored)


@pytest.mark.parametrize(("opts", "message"), [
    ("foo", "unknown mount option 'foo'; valid options: ro, rw, auto_unmount"),
    ("ro,attr_timeout=1", "unknown mount option 'attr_timeout'"),
    ("ro=1", "mount option 'ro' takes no value (got 'ro=1')"),
    ("nofail=yes", "mount option 'nofail' takes no value"),
    ("volfile", "mount option 'volfile' needs a value: volfile=FILE"),
    ("volfile=", "invalid value '' for volfile: expected a file path"),
    ("log-file=", "invalid value '' for log-file: expected a file path"),
    ("log-level=loud", "invalid value 'loud' for log-level: expected one of TRACE, DEBUG, "
                       "INFO, WARNING, ERROR, CRITICAL, NONE (any case)"),
    ("attribute-timeout=x",
     "invalid value 'x' for attribute-timeout: expected a number of seconds >= 0"),
    ("attribute-timeout=-1", "invalid value '-1' for attribute-timeout"),
    ("entry-timeout=inf", "invalid value 'inf' for entry-timeout"),
    ("negative-timeout=nan", "invalid value 'nan' for negative-timeout"),
    ("entry-timeout= 1", "invalid value ' 1' for entry-timeout"),
    ("volfile-server-port=0", "invalid value '0' for volfile-server-port: expected a port "
                              "number 1..65535"),
    ("volfile-server-port=65536", "invalid value '65536' for volfile-server-port"),
    ("volfile-server-port=+80", "invalid value '+80' for volfile-server-port"),
    ("backup-volfile-servers=a::b", "invalid value 'a::b' for backup-volfile-servers"),
    ("backup-volfile-servers=a,b", "unknown mount option 'b'"),
    ("backup-volfile-servers=", "invalid value '' for backup-volfile-servers"),
    ('log-file="/x', "unbalanced double quote"),
])
def test_bad_options(opts: str, message: str) -> None:
    with pytest.raises(MountOptionError) as ei:
        parse_mount_options(opts)
    assert str(ei.value).startswith(message)


def test_unknown_option_lists_what_is_accepted() -> None:
    with pytest.raises(MountOptionError) as ei:
        parse_mount_options("rw,fooo")
    msg = str(ei.value)
    for word in ("volfile=FILE", "log-level=LEVEL", "attribute-timeout=SECONDS",
                 "backup-volfile-servers=HOST1:HOST2", "_netdev", "x-*"):
        assert word in msg


def test_fuse_options() -> None:
    o = parse_mount_options("ro,auto_unmount")
    assert o.fuse_options("n1:/gvol0") == {"fsname=n1:/gvol0", "subtype=pyglfs", "allow_other",
                                           "default_permissions", "ro", "auto_unmount"}
    assert MountOptions().fuse_options("a,b") == {"fsname=a_b", "subtype=pyglfs",
                                                  "allow_other", "default_permissions"}


@pytest.mark.parametrize(("source", "expected"), [
    ("server1:/gvol0", ("server1", "gvol0", None)),
    ("server1:gvol0", ("server1", "gvol0", None)),
    ("127.0.0.2:/gvol0/", ("127.0.0.2", "gvol0", None)),
    ("node-2.example.com:/gvol0/app/data", ("node-2.example.com", "gvol0", "/app/data")),
    ("h:/v//a///b/", ("h", "v", "/a/b")),
    ("h:/v/with space", ("h", "v", "/with space")),
    ("[::1]:/gvol0/x", ("::1", "gvol0", "/x")),
])
def test_sources(source: str, expected: tuple[str, str, str | None]) -> None:
    got = parse_source(source)
    assert got == expected and isinstance(got, MountSource)


@pytest.mark.parametrize(("source", "fragment"), [
    ("gvol0", "invalid mount source 'gvol0': expected HOST:/VOLUME[/SUBDIR]"),
    (":/gvol0", "has no host"),
    ("h:", "has no volume name"),
    ("h:/", "has no volume name"),
    ("h://gvol0", "has no volume name"),
    ("bad host:/v", "invalid host 'bad host'"),
    ("a,b:/v", "invalid host 'a,b'"),
    ("h:/bad.vol", "invalid volume name 'bad.vol'"),
    ("h:/v/../etc", "invalid subdirectory component '..'"),
    ("h:/v/./x", "invalid subdirectory component '.'"),
    ("h:/v/" + "n" * 256, "names over 255 bytes"),
    ("h:/v/a\x00b", "invalid subdirectory component"),
    ("[::1/v", "invalid mount source"),
    ("[nope]:/v", "invalid IPv6 address '[nope]'"),
])
def test_bad_sources(source: str, fragment: str) -> None:
    with pytest.raises(MountOptionError) as ei:
        parse_source(source)
    assert fragment in str(ei.value)
