"""Docker's multiplexed attach stream, split wherever the socket's reads happen to fall."""

from __future__ import annotations

import random
import struct

import pytest

from sandbox.docker_runtime import Demuxer

FRAMES = [
    (1, b'{"type":"data","payload":1}\n'),
    (2, b"a warning\n"),
    (1, b""),  # an empty frame carries nothing and must not stall the stream
    (1, b"x" * 70_000),
    (2, "ünïcode ✓\n".encode()),
    (1, b"tail without newline"),
]


def multiplexed(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack(">BxxxL", kind, len(data)) + data for kind, data in frames)


def demux_in_reads(data: bytes, cuts: list[int]) -> dict[str, bytes]:
    demuxer = Demuxer()
    out = {"stdout": b"", "stderr": b""}
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        for stream, piece in demuxer.feed(data[start:end]):
            assert piece, "no empty pieces"
            out[stream] += piece
    return out


EXPECTED = {
    "stdout": b"".join(d for k, d in FRAMES if k == 1),
    "stderr": b"".join(d for k, d in FRAMES if k == 2),
}


def test_one_read() -> None:
    assert demux_in_reads(multiplexed(FRAMES), []) == EXPECTED


def test_every_byte_its_own_read() -> None:
    data = multiplexed(FRAMES[:3])
    expected = {"stdout": FRAMES[0][1], "stderr": FRAMES[1][1]}
    assert demux_in_reads(data, list(range(1, len(data)))) == expected


@pytest.mark.parametrize("seed", range(20))
def test_reads_cut_anywhere_headers_included(seed: int) -> None:
    data = multiplexed(FRAMES)
    rng = random.Random(seed)  # noqa: S311 - reproducible cut points, not secrets
    cuts = sorted(rng.sample(range(1, len(data)), 12))
    assert demux_in_reads(data, cuts) == EXPECTED


def test_a_whole_read_of_one_frame_payload_is_passed_on_without_a_copy() -> None:
    demuxer = Demuxer()
    assert list(demuxer.feed(struct.pack(">BxxxL", 1, 10))) == []
    payload = b"0123456789"
    [(stream, piece)] = list(demuxer.feed(payload))
    assert stream == "stdout"
    assert piece is payload
