"""The module-level asyncio API: :func:`aprocess`, :func:`aprocess_image`, :func:`asubmit`, :func:`amap`.

Each uses the shared :class:`Client` of :mod:`tilechord.client.facade` (configured from
the environment; with no ``TILECHORD_REDIS_URL`` its first job starts a local cluster),
through that client's :class:`AsyncClient` on the running event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from typing import TypeAlias

from PIL import Image

from ..ops import OpSpec, Pipeline
from .aio import AsyncClient, AsyncJob, for_client
from .batch import MapProgressCallback, MapResult
from .client import DEFAULT_GRID, GridSpec
from .facade import default_client
from .sources import Source

__all__ = ["amap", "aprocess", "aprocess_image", "asubmit"]

Ops: TypeAlias = "Iterable[OpSpec] | OpSpec | Pipeline | None"


def _async_client() -> AsyncClient:
    return for_client(default_client())


async def asubmit(
    source: Source,
    ops: Ops = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> AsyncJob:
    """Start a job; ``await job.get()`` for its result.  See :meth:`AsyncClient.asubmit`."""
    return await _async_client().asubmit(source, ops, grid=grid, format=format, timeout=timeout)


async def aprocess(
    source: Source,
    ops: Ops = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> bytes:
    """Edit an image file (path, bytes or binary file) on the cluster; returns its bytes.

    >>> data = await tilechord.aprocess("photo.jpg", ["grayscale", "gaussian_blur:radius=4"], grid=(2, 1))
    """
    return await _async_client().aprocess(source, ops, grid=grid, format=format, timeout=timeout)


async def aprocess_image(
    image: Image.Image, ops: Ops = None, *, grid: GridSpec = DEFAULT_GRID, timeout: float | None = None
) -> Image.Image:
    """Edit an in-memory PIL image on the cluster; returns a new PIL image."""
    return await _async_client().aprocess_image(image, ops, grid=grid, timeout=timeout)


def amap(
    sources: Iterable[Source] | AsyncIterable[Source],
    ops: Ops = None,
    *,
    grid: GridSpec = "auto",
    format: str | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    on_progress: MapProgressCallback | None = None,
) -> AsyncGenerator[MapResult, None]:
    """Edit many images, at most *jobs* at a time; ``async for`` each as it ends.

    >>> async for r in tilechord.amap(["a.jpg", "b.png"], ["sharpen"]):
    ...     print(r.source, r.error or len(r.data))

    See :meth:`AsyncClient.amap`.
    """
    return _async_client().amap(
        sources, ops, grid=grid, format=format, timeout=timeout, jobs=jobs, on_progress=on_progress
    )
