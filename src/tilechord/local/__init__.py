"""The local cluster: an embedded Redis, a worker pool and Flower on this machine.

Used when no Redis is configured (the API's first call, ``tilechord run``), by
``tilechord up``, and by the tests.  One module per part: :mod:`.procs` (children that
cannot outlive us), :mod:`.server` (Redis), :mod:`.workers`, :mod:`.flower`, and
:mod:`.cluster`, which starts and stops them together.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import ClusterError
from .cluster import LocalCluster, shared_cluster
from .flower import Flower
from .procs import check_address, pid_alive
from .server import EmbeddedRedis
from .workers import WorkerPool, ping_app

__all__ = [
    "ClusterError",
    "EmbeddedRedis",
    "Flower",
    "LocalCluster",
    "WorkerPool",
    "check_address",
    "pid_alive",
    "ping_app",
    "settings_env",
    "shared_cluster",
]

#: The old names, kept because tests import them: ``_ping_app`` is now :func:`ping_app`, and
#: ``settings_env(settings)`` is now ``settings.to_env()``.
_ping_app = ping_app
settings_env = Settings.to_env
