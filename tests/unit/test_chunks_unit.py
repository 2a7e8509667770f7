"""The pure parts of the chunked values: byte ranges, headers, key lists, and how a stream is cut.

No Redis: the writes are recorded on a stand-in for a pipeline that keeps only SET, DEL
and EXPIRE in a dict, and are read back from there by the header's own rules.  What real
Redis does with them is ``tests/test_chunks.py``.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from redis.client import Pipeline

from tilechord.errors import JobFailed
from tilechord.imaging.raw import RAW_MAGIC, pack_raw
from tilechord.worker import chunks
from tilechord.worker.keys import chunk_key

KEY = "tilechord:job:source"


class Recorded:
    """What a pipeline would have written, as a dict of key -> bytes (and the TTLs set)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}
        self.writes = 0
        self.expired: list[str] = []

    def set(self, name: str, value: Any, ex: int) -> None:
        self.values[name] = bytes(value)  # a copy now: the stream reuses its buffer
        self.ttls[name] = ex

    def delete(self, *names: str) -> None:
        for name in names:
            self.values.pop(name, None)

    def expire(self, name: str, ttl: int) -> None:
        self.expired.append(name)
        if name in self.values:
            self.ttls[name] = ttl

    def guard(self, queue: Callable[[Pipeline], list[str]]) -> None:
        self.writes += 1
        queue(cast(Pipeline, self))

    def read(self, key: str) -> bytes:
        """The value under *key*, by the header's rules."""
        layout = chunks.header_of(self.values[key])
        if layout is None:
            return self.values[key]
        parts = [self.values[chunk_key(key, n)] for n in range(layout.count)]
        assert all(len(p) == layout.chunk_bytes for p in parts[:-1]) and len(parts[-1]) <= layout.chunk_bytes
        return b"".join(parts)


@given(
    length=st.integers(0, 5000),
    chunk_bytes=st.integers(0, 1200),
    offset=st.integers(0, 6000),
    size=st.integers(0, 6000),
)
def test_the_spans_of_a_range_are_the_slice_of_the_value(
    length: int, chunk_bytes: int, offset: int, size: int
) -> None:
    data = bytes(i % 251 for i in range(length))
    layout = chunks.Layout(length, chunk_bytes)
    pieces = chunks.spans(layout, offset, size)
    if chunk_bytes:
        stored = [data[n : n + chunk_bytes] for n in range(0, length, chunk_bytes)]
        got = b"".join(stored[n][start:end] for n, start, end in pieces)
        assert all(0 <= start < end <= len(stored[n]) for n, start, end in pieces)
        touched = [n for n, _, _ in pieces]
        assert touched == list(range(offset // chunk_bytes, offset // chunk_bytes + len(pieces)))
    else:
        got = b"".join(data[start:end] for _, start, end in pieces)
        assert all(n == -1 for n, _, _ in pieces)
    assert got == data[offset : offset + size]


def test_a_negative_range_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        chunks.spans(chunks.Layout(10), -1, 3)


@given(data=st.binary(max_size=3000), chunk_bytes=st.integers(1, 700))
def test_what_queue_put_writes_reads_back_and_keys_for_names_it(data: bytes, chunk_bytes: int) -> None:
    pipe = Recorded()
    written = chunks.queue_put(cast(Pipeline, pipe), KEY, data, 60, chunk_bytes)
    order = list(pipe.values)  # in the order written: the header (or the plain value) last
    assert written == chunks.keys_for(KEY, data, chunk_bytes) == [order[-1], *order[:-1]]
    assert set(written) == set(pipe.values) and set(pipe.ttls.values()) == {60}
    assert all(len(v) <= max(chunk_bytes, chunks.HEADER_BYTES) for v in pipe.values.values())
    assert pipe.read(KEY) == data


@given(
    data=st.binary(max_size=4000),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
    chunk_bytes=st.integers(1, 900),
)
def test_a_stream_cut_anywhere_is_stored_as_queue_put_stores_the_whole(
    data: bytes, cuts: list[int], chunk_bytes: int
) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    parts = [data[a:b] for a, b in itertools.pairwise(bounds)] + [b""]
    streamed, whole = Recorded(), Recorded()
    written = chunks.put_stream(cast(Any, None), KEY, parts, 60, streamed.guard, chunk_bytes)
    chunks.queue_put(cast(Pipeline, whole), KEY, data, 60, chunk_bytes)
    assert written == chunks.keys_for(KEY, data, chunk_bytes)
    assert streamed.values == whole.values and set(streamed.ttls.values()) == {60}
    assert streamed.writes == max(1, len(written) - 1)
    # the last write renews the TTL of the chunks written before it: all expire together
    assert streamed.expired == [chunk_key(KEY, n) for n in range(len(written) - 2)]


def test_a_file_stream_reads_short_reads_to_the_end() -> None:
    class Trickle(io.RawIOBase):
        """A file whose every read gives at most 3 bytes."""

        def __init__(self, data: bytes) -> None:
            self.source = io.BytesIO(data)

        def readinto(self, buffer: Any) -> int:
            chunk = self.source.read(min(3, len(buffer)))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = bytes(range(256)) * 9
    pipe = Recorded()
    chunks.put_file(cast(Any, None), KEY, Trickle(data), 60, pipe.guard, 1000)
    assert pipe.read(KEY) == data and len(pipe.values) == 4


@pytest.mark.parametrize(
    "value",
    [b"", b"{}", RAW_MAGIC, pack_raw(Image.new("L", (3, 2))), b"\x89PNG\r\n\x1a\n", b"II*\x00", b"TCCHUN"],
    ids=["empty", "json", "raw-magic", "raw", "png", "tiff", "short-prefix"],
)
def test_a_plain_value_has_no_header(value: bytes) -> None:
    assert chunks.header_of(value) is None
    assert chunks.keys_for(KEY, value, 1000) == [KEY]


def test_a_header_of_another_version_is_refused_not_read_as_data() -> None:
    with pytest.raises(JobFailed, match="unknown format"):
        chunks.header_of(b"TCCHUNKS2\n" + bytes(16))
    with pytest.raises(JobFailed, match="unknown format"):
        chunks.header_of(chunks.MAGIC + bytes(3))
    with pytest.raises(JobFailed, match="chunk size of 0"):
        chunks.header_of(chunks.MAGIC + (5).to_bytes(8, "big") + bytes(8))


def test_a_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        chunks.keys_for(KEY, b"x", 0)
