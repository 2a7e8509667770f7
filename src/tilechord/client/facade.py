"""The module-level API: :func:`process`, :func:`process_image`, :func:`submit`, :func:`map`.

Each uses one shared :class:`Client` configured from the environment, made on first use:
with no ``TILECHORD_REDIS_URL`` it starts a local cluster that serves every later call
and stops when the program exits.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable

from PIL import Image

from ..ops import OpSpec, Pipeline
from .batch import DEFAULT_BATCH, MapProgressCallback, MapResult
from .client import DEFAULT_GRID, Client, GridSpec
from .job import Job
from .sources import Source

__all__ = ["map", "process", "process_image", "submit"]

_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


def submit(
    source: Source,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> Job:
    """Start a job and return its :class:`Job` at once.  See :meth:`Client.submit`."""
    return default_client().submit(source, ops, grid=grid, format=format, timeout=timeout)


def process(
    source: Source,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> bytes:
    """Edit an image file (path, bytes or binary file) on the cluster; returns its bytes.

    >>> data = tilechord.process("photo.jpg", ["grayscale", "gaussian_blur:radius=4"], grid=(2, 1))
    """
    return default_client().process(source, ops, grid=grid, format=format, timeout=timeout)


def process_image(
    image: Image.Image,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    timeout: float | None = None,
) -> Image.Image:
    """Edit an in-memory PIL image on the cluster; returns a new PIL image."""
    return default_client().process_image(image, ops, grid=grid, timeout=timeout)


def map(
    sources: Iterable[Source],
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = "auto",
    format: str | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    batch: int = DEFAULT_BATCH,
    on_progress: MapProgressCallback | None = None,
) -> Generator[MapResult, None, None]:
    """Edit many images, one job each, a bounded number at a time; yield each as it ends.

    >>> for r in tilechord.map(["a.jpg", "b.png"], ["sharpen"]):
    ...     print(r.source, r.error or len(r.data))

    See :meth:`Client.map`.
    """
    return default_client().map(
        sources,
        ops,
        grid=grid,
        format=format,
        timeout=timeout,
        jobs=jobs,
        batch=batch,
        on_progress=on_progress,
    )
