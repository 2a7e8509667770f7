"""Settings.to_env: the variables a worker needs to rebuild the caller's settings exactly.

The local cluster's workers and Flower read their settings from their environment, so a
limit or timeout that does not survive the trip is silently a default in the worker.
"""

from __future__ import annotations

import dataclasses
import os

from hypothesis import given
from hypothesis import strategies as st

from tilechord import Settings
from tilechord.local import Flower, LocalCluster, WorkerPool, settings_env

_PASSWORD = st.from_regex(r"\APw[A-Za-z0-9_-]{14,30}\Z")  # "Pw": cannot occur by chance in a repr
_URL = st.builds(
    lambda scheme, password, host, port, db: f"{scheme}://:{password}@{host}:{port}/{db}",
    st.sampled_from(["redis", "rediss"]),
    _PASSWORD,
    st.from_regex(r"\A[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,15}){0,2}\Z"),
    st.integers(1, 65535),
    st.integers(0, 15),
)
_MODULE = st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}(\.[a-z_][a-z0-9_]{0,10}){0,2}\Z")

#: Every setting a variable carries, over the values from_env accepts (max_side has no variable).
_SETTINGS = st.builds(
    Settings,
    redis_url=st.none() | _URL,
    result_url=st.none() | _URL,
    key_ttl=st.integers(10, 10**9),
    job_timeout=st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False),
    lease=st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False),
    max_pixels=st.integers(1, 10**12),
    max_stream_pixels=st.integers(1, 10**13),
    max_bytes=st.integers(1, 10**12),
    max_tiles=st.integers(1, 10**6),
    workers=st.integers(1, 1024),
    plugins=st.lists(_MODULE, max_size=4).map(tuple),
)

#: A value other than the default for every field, max_side included.
NON_DEFAULT = Settings(
    redis_url="redis://:PwBrokerSecret0123@broker.example:6380/2",
    result_url="rediss://:PwResultSecret4567@results.example:6381/3",
    key_ttl=77,
    job_timeout=12.25,
    lease=3.5,
    max_pixels=10,
    max_stream_pixels=14,
    max_bytes=11,
    max_tiles=12,
    window=3,
    max_side=13,
    workers=(os.cpu_count() or 1) + 1,
    plugins=("a.b", "c"),
)


def _differing(a: Settings, b: Settings) -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if getattr(a, f.name) != getattr(b, f.name)]


def test_the_defaults_round_trip() -> None:
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_a_non_default_value_of_every_field_round_trips_but_max_side() -> None:
    default = Settings()
    assert _differing(NON_DEFAULT, default) == [f.name for f in dataclasses.fields(Settings)]
    back = Settings.from_env(NON_DEFAULT.to_env())
    assert back == dataclasses.replace(NON_DEFAULT, max_side=default.max_side)


def test_max_side_has_no_variable_and_stays_at_its_default() -> None:
    env = Settings(max_side=13).to_env()
    assert not any("SIDE" in name for name in env)
    assert Settings.from_env(env).max_side == Settings().max_side


@given(_SETTINGS)
def test_every_setting_survives_the_trip_through_the_environment(settings: Settings) -> None:
    env = settings.to_env()
    assert all(name.startswith("TILECHORD_") for name in env)
    assert Settings.from_env(env) == settings


@given(_SETTINGS, _SETTINGS)
def test_the_variables_override_whatever_the_child_inherits(settings: Settings, inherited: Settings) -> None:
    # a worker's environment is ours with these on top: nothing of ours may leak through
    assert Settings.from_env({**inherited.to_env(), **settings.to_env()}) == settings


def test_each_variable_sets_its_own_field() -> None:
    default = Settings()
    for name, value in NON_DEFAULT.to_env().items():
        alone = Settings.from_env({name: value})
        assert len(_differing(alone, default)) == 1, name


@given(_SETTINGS, _URL)
def test_passwords_stay_out_of_every_repr(settings: Settings, url: str) -> None:
    password = url.split(":")[2].split("@")[0]
    settings = dataclasses.replace(settings, redis_url=url, result_url=url)
    env = settings.to_env()
    for thing in (
        settings,
        LocalCluster(settings, workers=1),
        WorkerPool(url, env=env),
        Flower(url, env=env),
    ):
        assert password not in repr(thing)


def test_the_old_name_settings_env_is_to_env() -> None:
    assert settings_env(NON_DEFAULT) == NON_DEFAULT.to_env()
