"""One GET read straight off the socket into one buffer: tiles are tens of megabytes.

This reads two private attributes of redis-py's connection (``_sock`` and
``_parser._buffer``), so pyproject.toml pins redis-py's major version and
``tests/unit/test_worker_bulk.py`` fails loudly if either changes shape; anything
unexpected at run time falls back to redis-py's own parser, never to a wrong read.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import redis

__all__ = ["read_bulk", "read_bulk_into"]


def read_bulk(client: redis.Redis, key: str) -> memoryview | None:
    """GET *key*, reading the reply off the socket into one preallocated buffer.

    redis-py's pure-Python parser reads a bulk reply 64 KB at a time into a BytesIO and
    copies it three times more; for a 36 MB tile that is about 3x slower than this
    ``recv_into`` (``scripts/bench.py`` shows the data path).  hiredis would read faster
    but makes SET of large values 3.5x slower, so it stays out.  Anything unexpected
    (a reply already buffered, a non-socket transport) falls back to the parser.
    """
    made: list[memoryview] = []

    def buffer(size: int) -> memoryview:
        made.append(memoryview(bytearray(size)))
        return made[0]

    size = read_bulk_into(client, key, buffer)
    return None if size is None else made[0][:size]


def read_bulk_into(client: redis.Redis, key: str, buffer: Callable[[int], memoryview]) -> int | None:
    """GET *key* into ``buffer(size)`` (a view of at least *size* bytes): the size, or ``None``.

    What :func:`read_bulk` and the chunked reader (:mod:`.chunks`, into one buffer for all
    of a value's chunks) share.  *buffer* may raise (a reply larger than the caller wants):
    the connection, out of step, is dropped.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    clean = False
    try:
        conn.send_command("GET", key)  # type: ignore[no-untyped-call]
        sock = getattr(conn, "_sock", None)
        buffered = getattr(getattr(conn, "_parser", None), "_buffer", None)
        if sock is None or buffered is None or buffered.unread_bytes():
            reply = conn.read_response()
            clean = True
            if reply is None:
                return None
            buffer(len(reply))[: len(reply)] = reply
            return len(reply)
        try:
            size, rest = _reply_head(sock)
            if size is None:
                clean = True
                return None
            _receive(sock, buffer(size)[:size], rest[:size])
            _receive(sock, memoryview(bytearray(2)), rest[size:])  # the reply's final CRLF
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"timeout reading a GET reply: {exc}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"error reading a GET reply: {exc}") from None
        clean = True
        return size
    except redis.ResponseError:
        clean = True
        raise
    finally:
        if not clean:  # the reply was not read to its end: the connection is out of step
            conn.disconnect()  # type: ignore[no-untyped-call]
        pool.release(conn)


def _reply_head(sock: socket.socket) -> tuple[int | None, bytes]:
    """A bulk reply's length (``None`` for a nil) and the bytes read past its first line."""
    head = bytearray()
    while b"\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise redis.ConnectionError("Redis closed the connection during a GET")
        head += chunk
    line, _, rest = bytes(head).partition(b"\r\n")
    if line.startswith(b"-"):
        if rest:
            raise redis.ConnectionError("more data than the GET reply's error announced")
        raise redis.ResponseError(line[1:].decode(errors="replace"))
    if line in (b"$-1", b"_"):
        return None, rest
    if not line.startswith(b"$"):
        raise redis.ConnectionError(f"unexpected reply to GET: {line[:32]!r}")
    size = int(line[1:])
    if len(rest) > size + 2:
        raise redis.ConnectionError("more data than the GET reply announced")
    return size, rest


def _receive(sock: socket.socket, view: memoryview, have: bytes) -> None:
    """Fill *view*: first with *have* (already read), then off the socket."""
    view[: len(have)] = have
    got = len(have)
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise redis.ConnectionError("Redis closed the connection during a GET")
        got += n
