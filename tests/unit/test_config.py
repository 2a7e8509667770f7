"""Settings come from the environment once; Celery's settings derive from them."""

from __future__ import annotations

import pytest

from tilechord.config import Settings, celery_config, redact_url
from tilechord.errors import ConfigurationError


def test_settings_read_every_variable_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "TILECHORD_REDIS_URL": "redis://:secret@db.example:6380/2",
            "TILECHORD_RESULT_URL": "redis://results:6379/1",
            "TILECHORD_KEY_TTL": "120",
            "TILECHORD_JOB_TIMEOUT": "30.5",
            "TILECHORD_MAX_PIXELS": "1000",
            "TILECHORD_MAX_TILES": "16",
            "TILECHORD_WORKERS": "3",
            "TILECHORD_PLUGINS": "a.b, c",
        }
    )
    assert s.redis_url == "redis://:secret@db.example:6380/2"
    assert s.backend_url == "redis://results:6379/1"
    assert (s.key_ttl, s.job_timeout, s.max_pixels, s.max_tiles, s.workers) == (120, 30.5, 1000, 16, 3)
    assert s.plugins == ("a.b", "c")


def test_no_redis_url_means_the_local_cluster() -> None:
    assert Settings.from_env({}).redis_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TILECHORD_KEY_TTL", "soon"),
        ("TILECHORD_JOB_TIMEOUT", "-1"),
        ("TILECHORD_WORKERS", "0"),
        ("TILECHORD_REDIS_URL", "http://example.com"),
    ],
)
def test_bad_settings_raise_a_configuration_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_password_never_appears_in_repr_or_redacted_urls() -> None:
    s = Settings(redis_url="redis://user:hunter2@h:1/0", result_url="rediss://:hunter2@h:2/0")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert redact_url("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_celery_speaks_json_only_and_requeues_tiles_of_lost_workers() -> None:
    conf = celery_config(Settings(redis_url="redis://localhost:6379/0", job_timeout=100))
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["result_expires"] == Settings().key_ttl


def test_a_lost_workers_messages_come_back_after_the_lease_not_the_job_timeout() -> None:
    conf = celery_config(Settings(redis_url="redis://localhost:6379/0", job_timeout=600, lease=7.5))
    transport = conf["broker_transport_options"]
    assert transport["visibility_timeout"] == 7.5  # renewed by every worker (worker/lease.py)
    assert transport["unacked_restore_interval"] * transport["unacked_restore_throttle"] <= 1
    assert transport["unacked_mutex_expire"] < 7.5
    assert transport["socket_timeout"] and transport["health_check_interval"] <= 5
    assert conf["worker_consumer"] == "tilechord.worker.lease:Consumer"


def test_the_lease_is_read_from_the_environment_and_written_back() -> None:
    settings = Settings.from_env({"TILECHORD_LEASE": "4.5"})
    assert settings.lease == 4.5
    assert Settings.from_env(settings.to_env()).lease == 4.5
    assert Settings().lease == 10.0
    with pytest.raises(ConfigurationError, match="TILECHORD_LEASE"):
        Settings.from_env({"TILECHORD_LEASE": "soon"})


def test_rediss_urls_verify_certificates_by_default() -> None:
    import ssl

    conf = celery_config(Settings(redis_url="rediss://:pw@redis.example:6380/0"))
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert conf["redis_backend_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    explicit = celery_config(Settings(redis_url="rediss://h:6380/0?ssl_cert_reqs=none"))
    assert "broker_use_ssl" not in explicit


def test_default_limits_are_safe() -> None:
    default = Settings()
    assert default.max_pixels <= 2 * 89_478_485  # never above Pillow's own bomb error
    assert default.max_bytes <= 1024**3
    assert 1 <= default.max_tiles <= 1024
    assert default.job_timeout <= 3600


def test_settings_env_round_trips() -> None:
    settings = Settings(key_ttl=77, job_timeout=12.25, max_pixels=10, max_bytes=11, max_tiles=12, workers=3)
    assert Settings.from_env(settings.to_env()) == settings
