"""The client side: sources, jobs, the client and its batch scheduler, and the module-level API."""

from __future__ import annotations

from .api import (
    Client,
    GridSpec,
    Job,
    MapProgress,
    MapResult,
    Source,
    map,
    process,
    process_image,
    read_source,
    submit,
)

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
