"""Settings: one frozen dataclass, read once from ``TILECHORD_*`` variables.

Everything else receives a :class:`Settings` and derives what it needs from it; Celery's
own configuration is derived in exactly one place, :func:`celery_config`.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["QUEUE", "Settings", "celery_config", "redact_url", "redis_ssl_options"]

#: The queue every tilechord task goes to, so a shared Redis can serve other apps too.
QUEUE = "tilechord"


def redact_url(url: str | None) -> str | None:
    """Return *url* with its password replaced by ``***``, for logs, errors and reprs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, not {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, not {value}")
    return value


def _check_url(name: str, url: str | None) -> None:
    if url is None:
        return
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"{name} must be a redis:// or rediss:// URL, not {redact_url(url)!r}")


# -- the variables: one table, read by Settings.from_env and written by Settings.to_env --------

#: ``(env, variable name, the field's default) -> value``
_Reader = Callable[[Mapping[str, str], str, Any], Any]


def _read_url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    return env.get(name) or default


def _read_whole(minimum: int) -> _Reader:
    def read(env: Mapping[str, str], name: str, default: int) -> int:
        return _int(env, name, default, minimum=minimum)

    return read


def _read_names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())
    return names or default


@dataclass(frozen=True)
class _Variable:
    """One ``TILECHORD_*`` variable: the field it sets, how to parse it and how to write it."""

    field: str
    name: str
    read: _Reader
    write: Callable[[Any], str]


#: Every field but ``max_side``, which has no variable: it bounds the grid a caller asks for and
#: is checked where the job is submitted, so a worker never needs it.  from_env leaves it at
#: its default and to_env does not write it.
_VARIABLES: tuple[_Variable, ...] = (
    _Variable("redis_url", "TILECHORD_REDIS_URL", _read_url, lambda url: url or ""),
    _Variable("result_url", "TILECHORD_RESULT_URL", _read_url, lambda url: url or ""),
    _Variable("key_ttl", "TILECHORD_KEY_TTL", _read_whole(10), str),
    _Variable("job_timeout", "TILECHORD_JOB_TIMEOUT", _float, lambda s: repr(float(s))),  # repr: exact
    _Variable("lease", "TILECHORD_LEASE", _float, lambda s: repr(float(s))),
    _Variable("max_pixels", "TILECHORD_MAX_PIXELS", _read_whole(1), str),
    _Variable("max_stream_pixels", "TILECHORD_MAX_STREAM_PIXELS", _read_whole(1), str),
    _Variable("max_bytes", "TILECHORD_MAX_BYTES", _read_whole(1), str),
    _Variable("max_tiles", "TILECHORD_MAX_TILES", _read_whole(1), str),
    _Variable("window", "TILECHORD_WINDOW", _read_whole(0), str),
    _Variable("workers", "TILECHORD_WORKERS", _read_whole(1), str),
    _Variable("plugins", "TILECHORD_PLUGINS", _read_names, ",".join),
)
_NAMES = {v.field: v.name for v in _VARIABLES}  # for error messages that name the variable


@dataclass(frozen=True)
class Settings:
    """tilechord's configuration.  Build it with :meth:`from_env` or directly.

    ``redis_url`` of ``None`` means "no Redis configured": the API and the command line
    then start an embedded Redis and a local worker pool (see :mod:`tilechord.local`).
    """

    redis_url: str | None = field(default=None, repr=False)
    result_url: str | None = field(default=None, repr=False)
    key_ttl: int = 3600
    job_timeout: float = 600.0
    #: Seconds a task's claim on its message lasts unrenewed: a worker renews the claims of
    #: the messages it holds every lease/5 s, so a worker that dies, freezes or is cut off
    #: loses its tiles to another worker this long after its last renewal.
    lease: float = 10.0
    max_pixels: int = 178_956_970  # Pillow's own decompression-bomb error threshold
    #: The limit of a job that streams (a tiled or striped TIFF in, a TIFF out): no process
    #: holds its whole image, so it may be far larger than one that is decoded whole.
    max_stream_pixels: int = 10_000_000_000
    max_bytes: int = 512 * 1024 * 1024
    max_tiles: int = 256
    #: The most tiles of one windowed job (a tiled TIFF or a PNG into a streamed TIFF) in
    #: Redis at once, sent and not yet taken back by the client (:mod:`tilechord.worker.window`):
    #: what bounds Redis's memory whatever the image's size, each about one 48 MB tile's
    #: bytes at most.  Enough for this many worker processes to be busy; 0: no window.
    window: int = 8
    max_side: int = 1024  # a grid may have at most this many columns or rows
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_url(_NAMES["redis_url"], self.redis_url)
        _check_url(_NAMES["result_url"], self.result_url)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        urls = f"redis_url={redact_url(self.redis_url)!r}, result_url={redact_url(self.result_url)!r}"
        return f"Settings({urls}, {fields})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``TILECHORD_*`` variable once; unset ones keep their defaults."""
        env = os.environ if env is None else env
        default = cls()
        return cls(**{v.field: v.read(env, v.name, getattr(default, v.field)) for v in _VARIABLES})

    def to_env(self) -> dict[str, str]:
        """The ``TILECHORD_*`` variables that make :meth:`from_env` rebuild these settings.

        A worker or Flower reads its settings from its environment; without these it would
        run with the defaults, not the caller's limits and timeout.  Every variable is
        written, unset ones as ``""``, so none is inherited from our own environment.  The
        result holds the URLs' passwords: it is for a child's environment, never for a log.
        """
        return {v.name: v.write(getattr(self, v.field)) for v in _VARIABLES}

    @property
    def backend_url(self) -> str | None:
        """Where Celery keeps task results: the broker's Redis unless configured apart."""
        return self.result_url or self.redis_url

    def with_redis(self, url: str) -> Settings:
        """A copy pointing broker and results at *url* (used by the embedded cluster)."""
        return dataclasses.replace(self, redis_url=url, result_url=None)


def _ssl_options(url: str) -> dict[str, Any] | None:
    """Celery refuses ``rediss://`` without ``ssl_cert_reqs``; default to verifying."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    ca = os.environ.get("TILECHORD_SSL_CA_CERTS")
    if ca:
        options["ssl_ca_certs"] = ca
    return options


def redis_ssl_options(url: str) -> dict[str, Any]:
    """redis-py keyword arguments for *url*: the CA bundle of ``TILECHORD_SSL_CA_CERTS``.

    Celery's connections get the same through ``broker_use_ssl`` and
    ``redis_backend_use_ssl``; tilechord's own blob store connects with these, so a
    ``rediss://`` Redis with a private CA works for both.
    """
    options = _ssl_options(url)
    return {} if options is None else options


#: Seconds between the sweeps in which each worker requeues messages whose lease ran out,
#: and the seconds for which one sweeper holds kombu's sweep lock (a sweeper that dies
#: holding it blocks the others no longer than that).
SWEEP_EVERY = 1
SWEEP_LOCK = 5

#: Socket timeouts: a worker cut off from Redis (packets dropped, no reset) notices within
#: seconds instead of waiting for TCP to give up, and an idle connection is checked with
#: a PING before it is used again.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
HEALTH_CHECK = 2


def _transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport: the lease (see :func:`celery_config`), sweeps, timeouts."""
    return {
        "visibility_timeout": settings.lease,
        "unacked_restore_interval": SWEEP_EVERY,
        "unacked_restore_throttle": 1,  # scan on every sweep, not every tenth
        "unacked_mutex_expire": SWEEP_LOCK,
        "health_check_interval": HEALTH_CHECK,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours.  The only place they are chosen.

    The reliability settings answer Celery's defaults that lose or hang chords: late
    acknowledgement plus requeue on worker loss re-runs a tile whose worker process was
    killed (tasks write deterministic keys, so a repeat is harmless).  A message whose
    worker machine vanished with it (killed, frozen, cut off) comes back through kombu's
    visibility timeout, used here as a lease: it is :attr:`Settings.lease` seconds, far
    below a long tile's time, and each worker renews the lease of every message it holds
    (:mod:`tilechord.worker.lease`), so only a message whose holder stopped renewing it is
    requeued, by any live worker's sweep, within about a second of expiring.
    """
    if settings.redis_url is None:
        raise ConfigurationError(
            "no Redis URL: set TILECHORD_REDIS_URL (e.g. redis://:password@host:6379/0) for workers; "
            "`tilechord run` and `tilechord up` start a local Redis when none is set"
        )
    backend = settings.backend_url
    assert backend is not None
    conf: dict[str, Any] = {
        "broker_url": settings.redis_url,
        "result_backend": backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": settings.key_ttl,
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(settings),
        "result_backend_transport_options": {"health_check_interval": HEALTH_CHECK},
        "redis_socket_timeout": SOCKET_TIMEOUT,
        "redis_socket_connect_timeout": CONNECT_TIMEOUT,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": HEALTH_CHECK,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_consumer": "tilechord.worker.lease:Consumer",  # reconnects within a second
    }
    broker_ssl = _ssl_options(settings.redis_url)
    if broker_ssl is not None:
        conf["broker_use_ssl"] = broker_ssl
    backend_ssl = _ssl_options(backend)
    if backend_ssl is not None:
        conf["redis_backend_use_ssl"] = backend_ssl
    return conf
