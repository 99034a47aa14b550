"""Per-block xxh3 checksums."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import xxhash

from pyglfs.brickd.checksum import MAX_BLOCKS, block_checksums


def expected(data: bytes, offset: int, size: int, block: int) -> list[int]:
    piece = data[offset:offset + size]
    return [xxhash.xxh3_64_intdigest(piece[i:i + block]) for i in range(0, len(piece), block)]


@pytest.fixture
def data_fd(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = os.urandom(3 * 1024 * 1024 + 12345)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        yield data, fd
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("offset", "size", "block"),
    [
        (0, 3 * 1024 * 1024 + 12345, 128 * 1024),  # whole file, short last block
        (0, 1 << 30, 1024 * 1024),  # range past EOF: blocks after EOF are omitted
        (4096, 65536, 4096),
        (7, 1000, 333),  # unaligned offset and block
        (0, 5 * 1024 * 1024, 3 * 1024 * 1024),  # block bigger than a read chunk
        (100, 0, 4096),
        (1 << 40, 4096, 4096),  # entirely past EOF
    ],
)
def test_checksums_match_xxh3_of_each_block(
    data_fd: tuple[bytes, int], offset: int, size: int, block: int
) -> None:
    data, fd = data_fd
    assert block_checksums(fd, offset, size, block) == expected(data, offset, size, block)


def test_a_changed_byte_changes_only_its_block(data_fd: tuple[bytes, int]) -> None:
    data, fd = data_fd
    before = block_checksums(fd, 0, len(data), 65536)
    wfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
    try:
        os.pwrite(wfd, bytes([data[200000] ^ 1]), 200000)
    finally:
        os.close(wfd)
    after = block_checksums(fd, 0, len(data), 65536)
    diff = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert diff == [200000 // 65536]


@pytest.mark.parametrize(
    ("offset", "size", "block"),
    [(0, 100, 0), (0, 100, -1), (-1, 100, 10), (0, MAX_BLOCKS * 10 + 1, 10)],
)
def test_bad_arguments_are_einval(data_fd: tuple[bytes, int], offset: int, size: int,
                                  block: int) -> None:
    with pytest.raises(OSError) as ei:
        block_checksums(data_fd[1], offset, size, block)
    assert ei.value.errno == errno.EINVAL
