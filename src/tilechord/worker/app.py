"""The Celery app factory: built from :class:`~tilechord.config.Settings`, never from globals.

``celery -A tilechord worker`` finds the app through ``tilechord.app``, which is
:func:`default_app` (settings read once from the environment).  Clients with other
settings (the embedded cluster, tests) build their own with :func:`create_app`.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import redis
from celery import Celery
from celery.app import backends
from celery.backends.redis import RedisBackend

from ..config import Settings, celery_config
from ..errors import ConfigurationError
from .lease import LeaseRenewal
from .liveness import Liveness
from .store import BlobStore, retry_policy

__all__ = ["TilechordCelery", "create_app", "default_app", "load_plugins"]


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, without a pub/sub subscription per sent task.

    ``apply_async`` subscribes the sender to each task's result channel so that
    ``AsyncResult.get()`` can wait on it.  tilechord's client waits on a list of its own
    (BLPOP on ``tilechord:<job>:done``) and reads task states with plain GETs, so the
    subscriptions only cost a round trip each, and leave results whose ``__del__``
    tries to unsubscribe, and reconnect, after Redis is gone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # redis-py's retry with back-off, as tilechord's own connections have it: a stale
        # connection (a link just healed) is reconnected, not a failed chord (Celery calls
        # its chord bookkeeping outside its own retry policy).
        transient = [redis.ConnectionError, redis.TimeoutError]
        self.connparams.update(retry=retry_policy(), retry_on_error=transient)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


class TilechordCelery(Celery):  # type: ignore[misc]
    """A Celery app that also carries tilechord's settings and blob store."""

    tilechord_settings: Settings
    store: BlobStore
    #: Records each job task's message as sent, so a message lost in delivery can be sent again.
    amqp_cls = "tilechord.worker.resend:RecordingAMQP"

    def _get_backend(self) -> Any:
        backend, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        if backend is RedisBackend:
            backend = ResultBackend
        return backend(app=self, url=url)


def load_plugins(names: tuple[str, ...]) -> None:
    """Import ``TILECHORD_PLUGINS`` modules so their operations register (once each)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import plugin module {name!r} named in TILECHORD_PLUGINS: {exc}"
            ) from exc


def create_app(settings: Settings) -> TilechordCelery:
    """A Celery app for *settings*, with tilechord's tasks bound to it.

    The task module is imported here, not at the top: ``import tilechord`` (a client, the
    command line) must define no Celery task until an app is made.
    """
    from .tasks import bind

    load_plugins(settings.plugins)
    app = TilechordCelery("tilechord", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.tilechord_settings = settings
    assert settings.redis_url is not None  # celery_config has checked
    app.store = BlobStore(settings.redis_url, settings.key_ttl)
    app.steps["worker"].add(Liveness)  # a worker on this app keeps itself in the registry
    app.steps["consumer"].add(LeaseRenewal)  # ... and the leases of the messages it holds
    bind(app)
    return app


_default: TilechordCelery | None = None
_lock = threading.Lock()


def default_app() -> TilechordCelery:
    """The app for ``celery -A tilechord``, configured from ``TILECHORD_*`` variables."""
    global _default
    with _lock:
        if _default is None:
            _default = create_app(Settings.from_env())
        return _default
