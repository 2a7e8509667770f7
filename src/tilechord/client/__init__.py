"""The client side: sources, jobs, the client and its batch scheduler, and the module-level API.

Nothing here defines a Celery task: the worker's app (and its tasks) is made on a
client's first job.
"""

from __future__ import annotations

from .batch import MapProgress, MapResult
from .client import Client, GridSpec
from .facade import map, process, process_image, submit
from .job import Job
from .sources import Source, read_source

__all__ = [
    "Client",
    "GridSpec",
    "Job",
    "MapProgress",
    "MapResult",
    "Source",
    "map",
    "process",
    "process_image",
    "read_source",
    "submit",
]
