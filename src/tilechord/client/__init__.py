"""The client side: sources, jobs, the client and its batch scheduler, the module-level API,
and the asyncio face (:mod:`.aio`).

Nothing here defines a Celery task: the worker's app (and its tasks) is made on a
client's first job.
"""

from __future__ import annotations

from .aio import AsyncClient, AsyncJob
from .aio_facade import amap, aprocess, aprocess_image, asubmit
from .batch import MapProgress, MapResult
from .client import Client, GridSpec
from .facade import map, process, process_image, submit
from .job import Job
from .sources import Source, big_tiff, read_source

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "GridSpec",
    "Job",
    "MapProgress",
    "MapResult",
    "Source",
    "amap",
    "aprocess",
    "aprocess_image",
    "asubmit",
    "map",
    "process",
    "process_image",
    "read_source",
    "big_tiff",
    "submit",
]
