"""One GET read straight off the socket into one buffer: tiles are tens of megabytes.

This reads two private attributes of redis-py's connection (``_sock`` and
``_parser._buffer``), so pyproject.toml pins redis-py's major version and
``tests/unit/test_worker_bulk.py`` fails loudly if either changes shape; anything
unexpected at run time falls back to redis-py's own parser, never to a wrong read.
"""

from __future__ import annotations

import redis

__all__ = ["read_bulk"]


def read_bulk(client: redis.Redis, key: str) -> memoryview | None:
    """GET *key*, reading the reply off the socket into one preallocated buffer.

    redis-py's pure-Python parser reads a bulk reply 64 KB at a time into a BytesIO and
    copies it three times more; for a 36 MB tile that is about 3x slower than this
    ``recv_into`` (``scripts/bench.py`` shows the data path).  hiredis would read faster
    but makes SET of large values 3.5x slower, so it stays out.  Anything unexpected
    (a reply already buffered, a non-socket transport) falls back to the parser.
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
            return None if reply is None else memoryview(reply)
        try:
            head = bytearray()
            while b"\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection during a GET")
                head += chunk
            line, _, rest = bytes(head).partition(b"\r\n")
            if line.startswith(b"-"):
                clean = True
                raise redis.ResponseError(line[1:].decode(errors="replace"))
            if line in (b"$-1", b"_"):
                clean = True
                return None
            if not line.startswith(b"$"):
                raise redis.ConnectionError(f"unexpected reply to GET: {line[:32]!r}")
            length = int(line[1:])
            if len(rest) > length + 2:
                raise redis.ConnectionError("more data than the GET reply announced")
            buffer = bytearray(length + 2)
            view = memoryview(buffer)
            view[: len(rest)] = rest
            got = len(rest)
            while got < length + 2:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise redis.ConnectionError("Redis closed the connection during a GET")
                got += n
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"timeout reading a GET reply: {exc}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"error reading a GET reply: {exc}") from None
        clean = True
        return view[:length]
    finally:
        if not clean:  # the reply was not read to its end: the connection is out of step
            conn.disconnect()  # type: ignore[no-untyped-call]
        pool.release(conn)
