"""The local cluster: an embedded Redis, a worker pool and Flower on this machine.

Used when no Redis is configured (the API's first call, ``tilechord run``), by
``tilechord up``, and by the tests.
"""

from __future__ import annotations

from .cluster import (
    EmbeddedRedis,
    Flower,
    LocalCluster,
    WorkerPool,
    _ping_app,
    pid_alive,
    settings_env,
    shared_cluster,
)

__all__ = [
    "EmbeddedRedis",
    "Flower",
    "LocalCluster",
    "WorkerPool",
    "pid_alive",
    "ping_app",
    "settings_env",
    "shared_cluster",
]

ping_app = _ping_app
