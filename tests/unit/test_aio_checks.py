"""The asyncio client checks everything before it connects, as the sync one does (no Redis here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from images import encoded, photo

import tilechord
from tilechord import (
    AsyncClient,
    BrokerUnavailable,
    Client,
    InvalidGrid,
    InvalidImage,
    Settings,
    UnknownOperation,
)

pytestmark = pytest.mark.anyio

NOWHERE = "redis://127.0.0.1:9/0"  # nothing listens there: a connection attempt fails at once


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def offline() -> Iterator[Client]:
    client = Client(Settings(redis_url=NOWHERE, workers=2))
    try:
        yield client
    finally:
        client.close()


async def test_bad_input_is_refused_before_any_connection(offline: Client) -> None:
    aclient = AsyncClient(offline)
    png = encoded(photo(32, 24), "PNG")
    with pytest.raises(InvalidImage):
        await aclient.aprocess(b"not an image", ["invert"])
    with pytest.raises(UnknownOperation, match="did you mean"):
        await aclient.asubmit(png, ["invrt"])
    with pytest.raises(InvalidGrid):
        await aclient.aprocess(png, ["invert"], grid="2y2")
    with pytest.raises(InvalidImage, match=r"PIL\.Image\.Image"):
        await aclient.aprocess_image(png, ["invert"])  # type: ignore[arg-type]
    assert offline._app is None and aclient._waiter is None  # nothing connected
    with pytest.raises(BrokerUnavailable):  # a good job needs Redis: a typed error, at once
        await asyncio.wait_for(aclient.aprocess(png, ["invert"]), timeout=30)
    await aclient.aclose()


async def test_amap_refuses_a_bad_pipeline_grid_or_bound_at_once(offline: Client) -> None:
    aclient = AsyncClient(offline)
    with pytest.raises(UnknownOperation):
        await anext(aclient.amap([b"x"], ["nope"]))
    with pytest.raises(InvalidGrid):
        await anext(aclient.amap([b"x"], ["invert"], grid="0x1"))
    with pytest.raises(ValueError, match="jobs"):
        await anext(aclient.amap([b"x"], ["invert"], jobs=0))
    results = [r async for r in aclient.amap([b"junk", b"more junk"], ["invert"], grid=(1, 1))]
    assert sorted(r.index for r in results) == [0, 1]
    assert all(isinstance(r.error, InvalidImage) and r.job_id is None for r in results)
    assert offline._app is None


def test_max_connections_has_a_floor(offline: Client) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        AsyncClient(offline, max_connections=1)


async def test_for_client_gives_one_async_client_per_loop(offline: Client) -> None:
    from tilechord.client.aio import for_client

    first = for_client(offline)
    assert for_client(offline) is first and first.client is offline
    other = await asyncio.to_thread(lambda: asyncio.run(_for(offline)))
    assert other is not first


async def _for(client: Client) -> AsyncClient:
    from tilechord.client.aio import for_client

    return for_client(client)


def test_the_asyncio_names_are_public() -> None:
    for name in ("aprocess", "aprocess_image", "asubmit", "amap", "AsyncClient", "AsyncJob"):
        assert name in tilechord.__all__ and hasattr(tilechord, name)
