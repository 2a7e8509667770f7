"""Values over :data:`~.keys.CHUNK_BYTES` stored as chunks: no Redis value over 64 MB.

Redis refuses a value over 512 MB, and one huge value is held whole in a buffer on each
side of every read and write.  A value of at most ``CHUNK_BYTES`` is stored as it is,
under its key; a larger one as chunks under :func:`~.keys.chunk_key` (each at most
``CHUNK_BYTES``) plus, under the key itself, a small header: :data:`MAGIC`, the total
length and the chunk size.  A value that itself begins as a header does (``TCCHUNK``, the
first bytes of :data:`MAGIC` of every version) is stored as chunks too, however small, so
a plain value never begins so and a header cannot be confused with data.  The header is
written last (in the same MULTI, or after every chunk of a stream), so a reader that finds
it finds every chunk.

These are functions over a client or a pipeline; :mod:`.store` calls them inside its
guarded MULTI (the job's live check, the index set for cleanup).  Redis errors propagate.
A key that is absent reads as ``None`` (:func:`get`, :func:`head`, :func:`length`); a
header whose chunk is missing or of the wrong length raises :class:`~tilechord.errors.JobGone`
(the job was cleaned up or expired in the middle of the read), as do :func:`read_at` and
:func:`iter_chunks` on an absent key.

A value is written once per key (a re-run task writes the same bytes again): a rewrite
that changes a value while another process reads it may be read half old, half new.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import redis
from redis.client import Pipeline

from ..errors import JobFailed, JobGone
from ..imaging.raw import Data
from .bulk import read_bulk, read_bulk_into
from .keys import CHUNK_BYTES, chunk_key

__all__ = ["HEADER_BYTES", "MAGIC", "Data", "Guard", "Layout", "get", "head", "header_of", "iter_chunks"]
__all__ += ["keys_for", "keys_of", "length", "put_file", "put_stream", "queue_put", "read_at", "spans"]

#: What a chunked value's header begins with.  Distinct from the raw pixel format's
#: ``TCRAW1\n`` (:mod:`tilechord.imaging.raw`), json and every image format's signature;
#: and no plain value is ever stored beginning with it (see the module docstring).
MAGIC = b"TCCHUNKS1\n"
_FAMILY = MAGIC[:7]  # b"TCCHUNK": a header of some other version of this format
_HEAD = struct.Struct(">QQ")  # total length, chunk size
HEADER_BYTES = len(MAGIC) + _HEAD.size

#: Runs a function that queues writes on a (MULTI) pipeline and returns the keys it
#: wrote, then executes it: the store's guarded write (live check, index, undo).
Guard: TypeAlias = Callable[[Callable[[Pipeline], list[str]]], None]


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class Layout:
    """How a stored value lies in Redis: its length, and its chunk size (0: one plain value)."""

    length: int
    chunk_bytes: int = 0

    @property
    def chunked(self) -> bool:
        return self.chunk_bytes > 0

    @property
    def count(self) -> int:
        """How many chunk keys the value has (0 for a plain value)."""
        return -(-self.length // self.chunk_bytes) if self.chunked else 0


def _chunk_size(chunk_bytes: int | None) -> int:
    size = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    return size


def _bytes_of(data: Data) -> memoryview:
    return memoryview(data).cast("B")


def _needs_chunks(view: memoryview, chunk_bytes: int) -> bool:
    """Too long for one value, or beginning as a header does (which must stay unambiguous)."""
    return len(view) > chunk_bytes or view[: len(_FAMILY)] == _FAMILY


def _header(length: int, chunk_bytes: int) -> bytes:
    return MAGIC + _HEAD.pack(length, chunk_bytes)


def header_of(value: Data) -> Layout | None:
    """The layout a stored value's header gives, or ``None`` when *value* is a plain value.

    Pure: for a value read by some other command (``collect``'s pipelined GET).
    Raises :class:`JobFailed` for a header of another version of the format.
    """
    view = _bytes_of(value)
    if view[: len(_FAMILY)] != _FAMILY:
        return None
    if len(view) != HEADER_BYTES or view[: len(MAGIC)] != MAGIC:
        raise JobFailed(f"a chunked value's header of an unknown format: {bytes(view[:32])!r}")
    total, size = _HEAD.unpack_from(view, len(MAGIC))
    if size < 1:
        raise JobFailed(f"a chunked value's header with a chunk size of {size}")
    return Layout(total, size)


def keys_for(key: str, data: Data, chunk_bytes: int | None = None) -> list[str]:
    """Every key :func:`queue_put` writes for *data* (pure: for an undo list made beforehand)."""
    size = _chunk_size(chunk_bytes)
    view = _bytes_of(data)
    if not _needs_chunks(view, size):
        return [key]
    return [key, *(chunk_key(key, n) for n in range(max(1, -(-len(view) // size))))]


def queue_put(pipe: Pipeline, key: str, data: Data, ttl: int, chunk_bytes: int | None = None) -> list[str]:
    """Queue on *pipe* the SETs that store *data* under *key*; return every key written.

    Slices are memoryviews of *data*, which redis-py sends as they are: the value is never
    copied, however large.  Use a MULTI pipeline so that the header and the chunks land
    together; on a plain pipeline they still land in order (chunks first, header last).
    """
    size = _chunk_size(chunk_bytes)
    view = _bytes_of(data)
    if not _needs_chunks(view, size):
        pipe.set(key, view, ex=ttl)
        return [key]
    written = [key]
    for n, start in enumerate(range(0, max(1, len(view)), size)):
        written.append(chunk_key(key, n))
        pipe.set(written[-1], view[start : start + size], ex=ttl)
    pipe.set(key, _header(len(view), size), ex=ttl)
    return written


def _transaction(client: redis.Redis) -> Guard:
    """A guard with no live check: one MULTI per call (tests, and writers of no job)."""

    def run(queue: Callable[[Pipeline], list[str]]) -> None:
        pipe = client.pipeline(transaction=True)
        queue(pipe)
        pipe.execute()

    return run


def _queue_chunk(pipe: Pipeline, key: str, n: int, data: memoryview, ttl: int) -> list[str]:
    if n == 0:  # a header left by an earlier write must not point into this value's chunks
        pipe.delete(key)
    pipe.set(chunk_key(key, n), data, ex=ttl)
    return [key, chunk_key(key, n)] if n == 0 else [chunk_key(key, n)]


def _queue_tail(pipe: Pipeline, key: str, tail: memoryview, layout: Layout, ttl: int) -> list[str]:
    """The last write of a stream: the rest, the header, and the TTL of every chunk renewed."""
    if not layout.chunked:
        pipe.set(key, tail, ex=ttl)
        return [key]
    last = layout.count - 1
    pipe.set(chunk_key(key, last), tail, ex=ttl)
    for n in range(last):  # the first chunks were written a while ago: all expire together
        pipe.expire(chunk_key(key, n), ttl)
    pipe.set(key, _header(layout.length, layout.chunk_bytes), ex=ttl)
    return [key, chunk_key(key, last)]


def _stream(
    key: str, fill: Callable[[memoryview], int], ttl: int, guard: Guard, chunk_bytes: int
) -> list[str]:
    """Store what *fill* gives, one chunk per guarded write, in one buffer of a chunk's size.

    *fill* writes into the view it is given and returns how many bytes, fewer only at the
    end.  A chunk is sent only once the next byte is known to exist, so a value that fits
    in one chunk is stored plain, in one write.
    """
    view = memoryview(bytearray(chunk_bytes))
    spare = memoryview(bytearray(1))
    written: list[str] = []
    n = total = 0
    got = fill(view)
    while got == chunk_bytes and fill(spare):
        written += _collect(guard, functools.partial(_queue_chunk, key=key, n=n, data=view, ttl=ttl))
        n += 1
        total += chunk_bytes
        view[0] = spare[0]
        got = 1 + fill(view[1:])
    total += got
    tail = view[:got]
    chunked = n > 0 or _needs_chunks(tail, chunk_bytes)
    layout = Layout(total, chunk_bytes if chunked else 0)
    written += _collect(guard, functools.partial(_queue_tail, key=key, tail=tail, layout=layout, ttl=ttl))
    return list(dict.fromkeys(written))


def _collect(guard: Guard, queue: Callable[..., list[str]]) -> list[str]:
    """Run *queue* through *guard* and keep the keys it wrote."""
    keys: list[str] = []

    def run(pipe: Pipeline) -> list[str]:
        keys.extend(queue(pipe))
        return keys

    guard(run)
    return keys


def _fill_from_parts(parts: Iterable[Data]) -> Callable[[memoryview], int]:
    """A *fill* for :func:`_stream` over parts of any sizes (each copied once, into the buffer)."""
    source = iter(parts)
    pending = memoryview(b"")

    def fill(view: memoryview) -> int:
        nonlocal pending
        got = 0
        while got < len(view):
            if not pending:
                part = next(source, None)
                if part is None:
                    break
                pending = _bytes_of(part)
                continue
            take = min(len(view) - got, len(pending))
            view[got : got + take] = pending[:take]
            pending = pending[take:]
            got += take
        return got

    return fill


def put_stream(
    client: redis.Redis,
    key: str,
    parts: Iterable[Data],
    ttl: int,
    guard: Guard | None = None,
    chunk_bytes: int | None = None,
) -> list[str]:
    """Store the concatenation of *parts* under *key*, as they come; return every key written.

    For a value too big to hold (a source file as it is read, a tile as it is encoded): it
    holds one chunk's buffer, not the value.  Each chunk is one write through *guard*
    (the store's live check and index, see :data:`Guard`; by default a plain MULTI), the
    header the last, so no reader sees the value before it is whole.  If a write or
    *parts* raises, the chunks written so far stay (under their TTL, and in the store's
    index for its cleanup) and the key reads as absent.
    """
    return _stream(key, _fill_from_parts(parts), ttl, guard or _transaction(client), _chunk_size(chunk_bytes))


def put_file(
    client: redis.Redis,
    key: str,
    file: _ReadInto,
    ttl: int,
    guard: Guard | None = None,
    chunk_bytes: int | None = None,
) -> list[str]:
    """:func:`put_stream` of a binary file, read with ``readinto`` straight into the chunk buffer."""

    def fill(view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = file.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    return _stream(key, fill, ttl, guard or _transaction(client), _chunk_size(chunk_bytes))


def _gone(key: str, why: str) -> JobGone:
    return JobGone(f"{key} {why} (the job expired or was cleaned up)")


def _piece(layout: Layout, n: int) -> tuple[int, int]:
    """Where chunk *n* starts in the value, and its length."""
    start = n * layout.chunk_bytes
    return start, min(layout.chunk_bytes, layout.length - start)


def get(client: redis.Redis, key: str) -> memoryview | None:
    """The value under *key* in one buffer, or ``None`` if *key* is absent.

    A plain value is one GET (:func:`~.bulk.read_bulk`); a chunked one is read chunk by
    chunk straight into one preallocated buffer of its length.  Raises :class:`JobGone`
    if a chunk is missing or has the wrong length.
    """
    first = read_bulk(client, key)
    if first is None:
        return None
    layout = header_of(first)
    if layout is None:
        return first
    view = memoryview(bytearray(layout.length))
    for n in range(layout.count):
        start, size = _piece(layout, n)
        got = _read_into(client, chunk_key(key, n), view[start : start + size])
        if got != size:
            raise _gone(chunk_key(key, n), "is missing" if got is None else f"holds {got} bytes, not {size}")
    return view


def iter_chunks(client: redis.Redis, key: str) -> Iterator[memoryview]:
    """The value under *key* as a stream of parts (each chunk, or the plain value once).

    Holds one chunk at a time.  Raises :class:`JobGone` if *key* or a chunk is missing.
    """
    first = read_bulk(client, key)
    if first is None:
        raise _gone(key, "is missing")
    layout = header_of(first)
    if layout is None:
        yield first
        return
    for n in range(layout.count):
        part = read_bulk(client, chunk_key(key, n))
        if part is None or len(part) != _piece(layout, n)[1]:
            raise _gone(chunk_key(key, n), "is missing or was cut short")
        yield part


def head(client: redis.Redis, key: str) -> Layout | None:
    """The layout of the value under *key* (one round trip), or ``None`` if *key* is absent."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(key)
    pipe.strlen(key)
    pipe.getrange(key, 0, HEADER_BYTES - 1)
    exists, size, start = pipe.execute()
    if not exists:
        return None
    layout = header_of(start) if size == HEADER_BYTES else None
    return Layout(int(size)) if layout is None else layout


def length(client: redis.Redis, key: str) -> int | None:
    """The length of the value under *key*, chunked or not; ``None`` if *key* is absent."""
    layout = head(client, key)
    return None if layout is None else layout.length


def keys_of(client: redis.Redis, key: str) -> list[str]:
    """Every key holding the value under *key* (itself first), for a cleanup or an undo."""
    layout = head(client, key)
    if layout is None or not layout.chunked:
        return [key]
    return [key, *(chunk_key(key, n) for n in range(layout.count))]


def spans(layout: Layout, offset: int, size: int) -> list[tuple[int, int, int]]:
    """The pieces of bytes ``[offset, offset + size)`` of a value: ``(chunk, start, end)``.

    *start* and *end* are within the chunk (end exclusive); chunk -1 is the plain value.
    Clipped at the value's end, like a slice.  Pure: what :func:`read_at` reads.
    """
    if offset < 0 or size < 0:
        raise ValueError(f"a byte range needs a non-negative offset and size, not {offset}, {size}")
    stop = min(offset + size, layout.length)
    if stop <= offset:
        return []
    if not layout.chunked:
        return [(-1, offset, stop)]
    step = layout.chunk_bytes
    return [
        (n, max(offset, n * step) - n * step, min(stop, (n + 1) * step) - n * step)
        for n in range(offset // step, (stop - 1) // step + 1)
    ]


def read_at(client: redis.Redis, key: str, offset: int, size: int, layout: Layout | None = None) -> bytes:
    """Bytes ``[offset, offset + size)`` of the value under *key*, across chunk boundaries.

    One GETRANGE per chunk touched, in one round trip; fewer bytes at the value's end,
    like a file's ``read``.  Pass *layout* (:func:`head`, once) to save a round trip per
    call: what a region reader does.  Raises :class:`JobGone` if *key* or a chunk is missing.
    """
    if layout is None:
        layout = head(client, key)
        if layout is None:
            raise _gone(key, "is missing")
    pieces = spans(layout, offset, size)
    if not pieces:
        return b""
    pipe = client.pipeline(transaction=False)
    for n, start, end in pieces:
        name = key if n < 0 else chunk_key(key, n)
        pipe.strlen(name)  # a chunk that is missing or changed must not read as other bytes
        pipe.getrange(name, start, end - 1)
    replies = pipe.execute()
    parts: list[bytes] = replies[1::2]
    for (n, _, _), stored in zip(pieces, replies[::2], strict=True):
        if stored != (layout.length if n < 0 else _piece(layout, n)[1]):
            raise _gone(key if n < 0 else chunk_key(key, n), "is missing or was changed")
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- one GET into a given buffer -------------------------------------------------------


def _read_into(client: redis.Redis, key: str, out: memoryview) -> int | None:
    """GET *key* straight into *out*: the reply's length, or ``None`` if *key* is absent.

    A reply longer than *out* raises :class:`JobGone` (and drops the connection, out of step).
    """

    def buffer(size: int) -> memoryview:
        if size > len(out):
            raise _gone(key, f"holds {size} bytes, more than {len(out)}")
        return out

    return read_bulk_into(client, key, buffer)
