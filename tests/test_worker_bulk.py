"""The store's large-GET path reads redis-py internals: it must fail loudly when they change.

``tilechord.worker.bulk.read_bulk`` reads a reply off the connection's socket into one
buffer, using ``Connection._sock`` and the parser's ``_buffer``; pyproject.toml pins
redis-py's major version.  These tests run against the suite's real Redis.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tilechord.worker.bulk import read_bulk


@pytest.fixture
def connection_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.delete("tilechord-test:bulk")
        client.close()


def test_redis_py_still_has_the_internals_the_fast_read_uses(connection_client: redis.Redis) -> None:
    pool = connection_client.connection_pool
    conn = pool.get_connection()
    try:
        conn.connect()
        sock = getattr(conn, "_sock", None)
        buffer = getattr(getattr(conn, "_parser", None), "_buffer", None)
        assert sock is not None and hasattr(sock, "recv_into"), (
            f"redis-py {redis.__version__}: Connection._sock is gone; tilechord.worker.bulk falls back to "
            "the parser (3x slower for a tile): update read_bulk and the pin in pyproject.toml"
        )
        assert buffer is not None and callable(getattr(buffer, "unread_bytes", None)), (
            f"redis-py {redis.__version__}: the parser's _buffer.unread_bytes() is gone; update read_bulk"
        )
    finally:
        pool.release(conn)


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 3 * 1024 * 1024 + 7])
def test_a_large_get_reads_exactly_what_was_stored(connection_client: redis.Redis, size: int) -> None:
    data = os.urandom(size)
    connection_client.set("tilechord-test:bulk", data)
    got = read_bulk(connection_client, "tilechord-test:bulk")
    assert got is not None and bytes(got) == data
    # The connection is back in step: the next command on it reads its own reply.
    assert connection_client.get("tilechord-test:bulk") == data


def test_a_missing_key_reads_as_none(connection_client: redis.Redis) -> None:
    assert read_bulk(connection_client, "tilechord-test:no-such-key") is None
    assert connection_client.ping()


def test_an_error_reply_raises_and_leaves_the_connection_usable(connection_client: redis.Redis) -> None:
    connection_client.rpush("tilechord-test:bulk", b"x")  # a list: GET answers WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        read_bulk(connection_client, "tilechord-test:bulk")
    assert connection_client.ping()
