"""What tests that talk to the session's Redis and workers share: the plugins, the environment, the keys.

The fixtures that start the Redis and the workers stay in ``conftest.py``; these are the
plain helpers that fixtures and test modules both need (a test module never imports
``conftest`` or another test module).
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

#: This folder: the test plugin lives here, and test workers import it from here.
SUPPORT = Path(__file__).resolve().parent

#: Plugin modules every test worker and test client loads (see ``tilechord_testplugin``).
PLUGINS = ("tilechord_testplugin",)


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test worker: our Redis, our plugins, importable test support."""
    path = os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "TILECHORD_REDIS_URL": redis_url,
        "TILECHORD_PLUGINS": ",".join(PLUGINS),
        "PYTHONPATH": path,
        **extra,
    }


def tilechord_keys(r: redis.Redis) -> list[bytes]:
    """Every ``tilechord:*`` key in Redis now, sorted."""
    return sorted(r.scan_iter(match="tilechord:*", count=1000))
