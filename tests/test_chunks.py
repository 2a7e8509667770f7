"""Values over CHUNK_BYTES travel as chunks: what is read back is what was written, through real Redis.

Most cases use a chunk size of 1000 bytes (the functions take it as an argument, and the
header records it); one case stores a real 200 MB value with the real 64 MB chunks and
bounds the test process's memory around it.  Every case checks the keys in Redis
themselves: their number, their sizes (none over a chunk), their TTLs, and that the keys
a write returns are all the keys it wrote.
"""

from __future__ import annotations

import io
import json
import random
import re
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import random_image
from PIL import Image
from redis.client import Pipeline

from tilechord.errors import JobGone
from tilechord.imaging.raw import pack_raw
from tilechord.worker import chunks
from tilechord.worker.keys import CHUNK_BYTES, JobKeys, chunk_key, new_job_id

T = TypeVar("T")
SMALL = 1000
TTL = 600


@pytest.fixture
def key(redis_client: redis.Redis, no_leftovers: None) -> Iterator[str]:
    """A job's source key; every key under the job is deleted afterwards (and none may be left)."""
    keys = JobKeys(new_job_id())
    yield keys.source
    found = list(redis_client.scan_iter(match=f"tilechord:{keys.job_id}:*", count=1000))
    if found:
        redis_client.delete(*found)


def stored(r: redis.Redis, key: str) -> set[str]:
    """Every key in Redis that is *key* or one of its chunks."""
    return {k.decode() for k in r.scan_iter(match=f"{key}*", count=1000)}


def put(r: redis.Redis, key: str, data: bytes, chunk_bytes: int = SMALL) -> list[str]:
    pipe = r.pipeline(transaction=True)
    written = chunks.queue_put(pipe, key, data, TTL, chunk_bytes)
    pipe.execute()
    return written


def assert_stored_as_chunks(
    r: redis.Redis, key: str, written: list[str], size: int, chunk_bytes: int
) -> None:
    """The keys in Redis are exactly *written*; none is over a chunk; each has a TTL."""
    assert stored(r, key) == set(written) and len(written) == len(set(written))
    assert written[0] == key
    for name in written:
        assert 0 < r.strlen(name) <= chunk_bytes or (name == key and size == 0)
        assert 0 < r.ttl(name) <= TTL, f"{name} has no TTL"


@pytest.mark.parametrize(
    "size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 2 * SMALL + 1, 5 * SMALL + 500]
)
def test_a_value_reads_back_whole_and_no_key_holds_more_than_a_chunk(
    redis_client: redis.Redis, key: str, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    written = put(redis_client, key, data)
    count = 0 if size <= SMALL else -(-size // SMALL)
    assert written == [key, *(chunk_key(key, n) for n in range(count))]
    assert written == chunks.keys_for(key, data, SMALL) == chunks.keys_of(redis_client, key)
    assert_stored_as_chunks(redis_client, key, written, size, SMALL)
    got = chunks.get(redis_client, key)
    assert got is not None and bytes(got) == data
    assert chunks.length(redis_client, key) == size
    assert chunks.head(redis_client, key) == chunks.Layout(size, SMALL if count else 0)
    parts = [bytes(p) for p in chunks.iter_chunks(redis_client, key)]
    assert b"".join(parts) == data and all(len(p) <= SMALL for p in parts)
    assert len(parts) == max(1, count)


def _png() -> bytes:
    out = io.BytesIO()
    random_image("RGB", 8, 8, seed=1).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pack_raw(Image.new("RGB", (4, 4), (1, 2, 3))),
        _png(),
        json.dumps({"frames": 1}).encode(),
    ],
    ids=["raw", "png", "json"],
)
def test_what_tilechord_stores_small_stays_one_plain_value(
    redis_client: redis.Redis, key: str, data: bytes
) -> None:
    assert put(redis_client, key, data) == [key]
    assert redis_client.get(key) == data


@pytest.mark.parametrize(
    "data",
    [
        chunks.MAGIC,
        chunks.MAGIC + (10**9).to_bytes(8, "big") + (10).to_bytes(8, "big"),  # a forged header
        b"TCCHUNKS2\nfuture",
        b"TCCHUNK",
    ],
    ids=["magic", "forged-header", "other-version", "family-prefix"],
)
def test_a_value_beginning_as_a_header_does_is_stored_as_chunks_and_reads_back_as_itself(
    redis_client: redis.Redis, key: str, data: bytes
) -> None:
    written = put(redis_client, key, data)
    assert written == [key, chunk_key(key, 0)]
    assert redis_client.get(key) != data  # the key holds a header, not the value
    got = chunks.get(redis_client, key)
    assert got is not None and bytes(got) == data
    assert chunks.read_at(redis_client, key, 1, len(data)) == data[1:]


@pytest.fixture(scope="module")
def stored_values(redis_url: str) -> Iterator[tuple[redis.Redis, dict[str, bytes]]]:
    """One chunked value (with a short last chunk) and one plain value, for many reads."""
    r = redis.Redis.from_url(redis_url)
    prefix = f"tilechord-test:chunks:{new_job_id()}"  # not a job's: other tests watch tilechord:*
    values = {f"{prefix}:a": random.Random(7).randbytes(10 * SMALL + 7), f"{prefix}:b": b"plain value"}
    for name, data in values.items():
        put(r, name, data)
    try:
        yield r, values
    finally:
        r.delete(*(k for name in values for k in chunks.keys_of(r, name)))
        r.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([0, 1]), offset=st.integers(0, 11 * SMALL), size=st.integers(0, 3500))
def test_a_byte_range_is_the_slice_of_the_value_across_chunk_boundaries(
    stored_values: tuple[redis.Redis, dict[str, bytes]], which: int, offset: int, size: int
) -> None:
    r, values = stored_values
    name, data = list(values.items())[which]
    assert chunks.read_at(r, name, offset, size) == data[offset : offset + size]
    layout = chunks.head(r, name)
    assert chunks.read_at(r, name, offset, size, layout) == data[offset : offset + size]


def test_a_range_on_chunk_boundaries_reads_only_the_chunks_it_touches(
    stored_values: tuple[redis.Redis, dict[str, bytes]],
) -> None:
    r, values = stored_values
    name, data = next(iter(values.items()))
    layout = chunks.head(r, name)
    assert layout is not None and layout.count == 11
    assert chunks.read_at(r, name, SMALL - 1, 2, layout) == data[SMALL - 1 : SMALL + 1]
    assert chunks.read_at(r, name, 3 * SMALL, SMALL, layout) == data[3 * SMALL : 4 * SMALL]
    assert chunks.read_at(r, name, 10 * SMALL, 10**6, layout) == data[10 * SMALL :]  # clipped at the end
    assert chunks.read_at(r, name, len(data), 5, layout) == b""


def _parts(data: bytes, seed: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    at = 0
    while at < len(data):
        step = rnd.choice([0, 1, 7, SMALL - 1, SMALL, SMALL + 3, 2500])
        yield data[at : at + step]
        at += step


class Recorder:
    """A guard as the store's: one MULTI per write; it records what a reader sees between writes."""

    def __init__(self, r: redis.Redis, key: str) -> None:
        self.r, self.key = r, key
        self.calls: list[list[str]] = []
        self.seen: list[memoryview | None] = []

    def __call__(self, queue: Callable[[Pipeline], list[str]]) -> None:
        self.seen.append(chunks.get(self.r, self.key))
        pipe = self.r.pipeline(transaction=True)
        self.calls.append(list(queue(pipe)))
        pipe.execute()


@pytest.mark.parametrize("size", [0, 5, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 1, 7 * SMALL + 321])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_stream_is_stored_as_queue_put_would_and_is_absent_until_whole(
    redis_client: redis.Redis, key: str, size: int, seed: int
) -> None:
    data = random.Random(size).randbytes(size)
    guard = Recorder(redis_client, key)
    written = chunks.put_stream(redis_client, key, _parts(data, seed), TTL, guard, SMALL)
    assert written == chunks.keys_for(key, data, SMALL)
    assert {k for call in guard.calls for k in call} == set(written)
    assert len(guard.calls) == max(1, len(written) - 1)  # one write per chunk, or one plain write
    assert guard.seen == [None] * len(guard.calls)  # no reader saw a part of the value
    assert_stored_as_chunks(redis_client, key, written, size, SMALL)
    got = chunks.get(redis_client, key)
    assert got is not None and bytes(got) == data


@pytest.mark.parametrize("size", [0, SMALL, 3 * SMALL, 3 * SMALL + 1])
def test_a_file_is_read_into_the_chunk_buffer_and_stored_as_its_bytes(
    redis_client: redis.Redis, key: str, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    written = chunks.put_file(redis_client, key, io.BytesIO(data), TTL, None, SMALL)
    assert written == chunks.keys_for(key, data, SMALL)
    assert_stored_as_chunks(redis_client, key, written, size, SMALL)
    got = chunks.get(redis_client, key)
    assert got is not None and bytes(got) == data


def test_a_stream_over_a_larger_value_leaves_no_stale_header(redis_client: redis.Redis, key: str) -> None:
    put(redis_client, key, b"a" * (9 * SMALL))
    seen: list[memoryview | None] = []

    def guard(queue: Callable[[Pipeline], list[str]]) -> None:
        pipe = redis_client.pipeline(transaction=True)
        queue(pipe)
        pipe.execute()
        seen.append(chunks.get(redis_client, key))

    data = b"b" * (2 * SMALL + 1)
    chunks.put_stream(redis_client, key, [data], TTL, guard, SMALL)
    assert seen[:-1] == [None, None]  # the old header was dropped with the first chunk
    got = chunks.get(redis_client, key)
    assert got is not None and bytes(got) == data


def test_an_absent_value_reads_as_none_and_a_range_of_it_raises_job_gone(
    redis_client: redis.Redis, key: str
) -> None:
    assert chunks.get(redis_client, key) is None
    assert chunks.head(redis_client, key) is None and chunks.length(redis_client, key) is None
    assert chunks.keys_of(redis_client, key) == [key]
    with pytest.raises(JobGone, match=re.escape(key)):
        chunks.read_at(redis_client, key, 0, 10)
    with pytest.raises(JobGone, match=re.escape(key)):
        list(chunks.iter_chunks(redis_client, key))


@pytest.mark.parametrize("fault", ["deleted", "cut short", "too long"])
def test_a_missing_or_changed_chunk_raises_job_gone_and_the_connection_stays_usable(
    redis_client: redis.Redis, key: str, fault: str
) -> None:
    data = random.Random(3).randbytes(4 * SMALL)
    put(redis_client, key, data)
    victim = chunk_key(key, 2)
    if fault == "deleted":
        redis_client.delete(victim)
    else:
        redis_client.set(victim, b"x" * (SMALL - 1 if fault == "cut short" else SMALL + 5), ex=TTL)
    for read in (
        lambda: chunks.get(redis_client, key),
        lambda: list(chunks.iter_chunks(redis_client, key)),
        lambda: chunks.read_at(redis_client, key, 2 * SMALL, SMALL),
    ):
        with pytest.raises(JobGone, match=re.escape(victim)):
            read()
        assert redis_client.get(chunk_key(key, 1)) == data[SMALL : 2 * SMALL]  # the next reply is its own
    assert chunks.read_at(redis_client, key, 0, SMALL) == data[:SMALL]  # untouched chunks still read


def test_an_error_reply_to_a_chunk_read_raises_and_leaves_the_connection_usable(
    redis_client: redis.Redis, key: str
) -> None:
    put(redis_client, key, b"z" * (3 * SMALL))
    redis_client.delete(chunk_key(key, 1))
    redis_client.rpush(chunk_key(key, 1), b"x")  # a list: GET answers WRONGTYPE
    redis_client.expire(chunk_key(key, 1), TTL)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        chunks.get(redis_client, key)
    assert redis_client.ping()


# -- one real 200 MB value -------------------------------------------------------------

BIG = 200 * 1024 * 1024 + 12345  # four chunks, the last a short one
SLACK = 8 * 1024 * 1024  # what redis-py, the protocol and the interpreter may allocate besides


def _peak_rss() -> int:
    """The process's peak resident memory (VmHWM) in bytes, since the last :func:`_reset_peak`."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    return _peak_rss()


def _measured(step: Callable[[], T]) -> tuple[T, int, int]:
    """Run *step*: its result, its peak of Python allocations, and of resident memory, over the start."""
    base_rss = _reset_peak()
    tracemalloc.start()
    try:
        result = step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, _peak_rss() - base_rss


@pytest.mark.slow
def test_a_200_mb_value_goes_through_real_chunks_held_at_most_twice(
    redis_client: redis.Redis, key: str, tmp_path: Path
) -> None:
    data = random.Random(200).randbytes(BIG)

    def write() -> list[str]:
        return put(redis_client, key, data, CHUNK_BYTES)

    written, allocated, rss = _measured(write)
    assert len(written) == 5
    assert allocated < SLACK and rss < SLACK, "the write copied the value"
    assert_stored_as_chunks(redis_client, key, written, BIG, CHUNK_BYTES)
    assert max(redis_client.strlen(k) for k in stored(redis_client, key)) == CHUNK_BYTES

    got, allocated, rss = _measured(lambda: chunks.get(redis_client, key))
    assert got is not None and got == data
    assert BIG <= allocated < BIG + SLACK and rss < BIG + SLACK, "the read held more than one buffer"
    del got

    edge = 3 * CHUNK_BYTES - 100
    assert chunks.read_at(redis_client, key, edge, 300) == data[edge : edge + 300]

    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with path.open("rb") as file:
        written, allocated, rss = _measured(lambda: chunks.put_file(redis_client, key, file, TTL))
    assert allocated < CHUNK_BYTES + SLACK and rss < CHUNK_BYTES + SLACK, "the stream held more than a chunk"
    assert written == chunks.keys_of(redis_client, key)
    assert_stored_as_chunks(redis_client, key, written, BIG, CHUNK_BYTES)
    at = 0
    for part in chunks.iter_chunks(redis_client, key):
        assert len(part) <= CHUNK_BYTES and part == data[at : at + len(part)]
        at += len(part)
    assert at == BIG
