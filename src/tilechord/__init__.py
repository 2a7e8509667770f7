"""tilechord: edit images in parallel on a Celery cluster, seam-free.

>>> import tilechord
>>> data = tilechord.process("photo.jpg", ["grayscale", "gaussian_blur:radius=4"], grid=(2, 1))
>>> for result in tilechord.map(["a.jpg", "b.png"], ["sharpen"]):  # as each finishes
...     print(result.source, result.error or len(result.data))
>>> data = await tilechord.aprocess("photo.jpg", ["sharpen"])  # in a coroutine: no thread waits

``celery -A tilechord worker`` runs a worker; ``tilechord --help`` the command line.
"""

from __future__ import annotations

from typing import Any

from .client import Client, Job, MapProgress, MapResult, map, process, process_image, submit
from .client.aio import AsyncClient, AsyncJob
from .client.aio_facade import amap, aprocess, aprocess_image, asubmit
from .config import Settings
from .errors import (
    BrokerUnavailable,
    ClusterError,
    ConfigurationError,
    ImageTooLarge,
    InvalidGrid,
    InvalidImage,
    InvalidParameter,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NoWorker,
    RedisUnreachable,
    TilechordError,
    UnknownOperation,
    UnsupportedFormat,
    UnsupportedMode,
)
from .ops import Kind, Pipeline, operation, parse_pipeline, registry

__version__ = "0.1.0"

__all__ = [
    "process",
    "process_image",
    "submit",
    "map",
    "aprocess",
    "aprocess_image",
    "asubmit",
    "amap",
    "Client",
    "Job",
    "AsyncClient",
    "AsyncJob",
    "MapResult",
    "MapProgress",
    "Settings",
    "operation",
    "registry",
    "Kind",
    "Pipeline",
    "parse_pipeline",
    "TilechordError",
    "ConfigurationError",
    "ClusterError",
    "BrokerUnavailable",
    "RedisUnreachable",
    "InvalidImage",
    "ImageTooLarge",
    "UnsupportedFormat",
    "UnknownOperation",
    "InvalidParameter",
    "UnsupportedMode",
    "InvalidGrid",
    "JobFailed",
    "JobCancelled",
    "JobTimeout",
    "NoWorker",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # `celery -A tilechord worker` looks up `tilechord.app`; build it only when asked,
    # so importing tilechord reads no environment and connects to nothing.
    if name in ("app", "celery"):
        from .worker.app import default_app

        return default_app()
    raise AttributeError(f"module 'tilechord' has no attribute {name!r}")
