"""Damaged files through the real workers: a typed error or Pillow's own result (issue #18 item 14).

Hypothesis takes a real file of a format tilechord reads and writes (made with Pillow;
the PSD by hand, since Pillow cannot write one), damages it (bit flips, bytes set,
truncations, PNG chunks or JPEG segments swapped, repeated or dropped, huge declared
sizes) and runs a job on it through the session's Redis and workers, into TIFF (which
holds every frame, in its own mode).  The API must raise nothing but a
:class:`TilechordError`; where Pillow decodes the file completely and its whole-image
calls and TIFF writer accept it, tilechord must give the same frames, byte for byte.
After each job the workers serve the next one and no key is left.

The header inspection the client does is fuzzed with many more examples, without Redis,
in ``unit/test_imaging_frames.py``; this file keeps to a few, each a real job.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Iterator

import pytest
import redis
from damaged import CORPUS, PSD_LAYER_BOTTOM, Mutation, damaged_file, mutations, pillow_frames, saved
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from images import photo
from PIL import Image
from reference import pillow, reference_or_none
from workers import tilechord_keys

from tilechord import Client, Settings
from tilechord.errors import ImageTooLarge, TilechordError

#: The client's pixel limit here: a damaged header may declare any size, and below
#: Pillow's own limit a decoder allocates it all before finding the data short.
LIMIT = 4_000_000
PIPELINES = ([], ["mirror"], ["invert"], ["gaussian_blur:radius=1"], ["rotate:angle=90", "sharpen"])


# ------------------------------------------------------------------ Pillow's own result


def pillow_result(data: bytes, steps: list[str]) -> list[Image.Image] | None:
    """Pillow on the whole file: every frame loaded, the steps applied, written as TIFF and read back.

    ``None`` where Pillow cannot: it fails to decode a frame, refuses a step for a mode,
    or its TIFF writer refuses.  A PSD is its composite (its layers are not frames).
    """
    try:
        image = Image.open(io.BytesIO(data))
        count = 1 if image.format == "PSD" else image.n_frames if hasattr(image, "n_frames") else 1
        frames = []
        for index in range(count):
            if image.size[0] * image.size[1] * (len(frames) + 1) > LIMIT:
                return None
            image.seek(index)
            image.load()
            frames.append(image.copy())
        edited = [reference_or_none(frame, steps) for frame in frames]
        if any(frame is None for frame in edited):
            return None
        return pillow_frames(saved([f for f in edited if f is not None], "TIFF"))
    except Exception:
        return None


@pytest.fixture(scope="module")
def limited(settings: Settings, worker: object) -> Iterator[Client]:
    """A client of the session's Redis and workers, with a pixel limit a fuzzer cannot make slow."""
    client = Client(dataclasses.replace(settings, max_pixels=LIMIT))
    try:
        yield client
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # the second layer's bottom made negative: reading n_frames raised ValueError
    name="psd", damage=[Mutation("byte", (PSD_LAYER_BOTTOM + 0.5) / len(CORPUS["psd"]), value=0xFF)], steps=[]
)
@example(name="mpo", damage=[Mutation("swap", 0.5, 0.5)], steps=["mirror"])  # a piece for itself: intact
@given(
    name=st.sampled_from(sorted(CORPUS)),
    damage=st.lists(mutations(), min_size=1, max_size=2),
    steps=st.sampled_from(PIPELINES),
)
def test_a_damaged_file_gives_a_typed_error_or_pillows_result_and_the_workers_go_on(
    limited: Client, redis_client: redis.Redis, name: str, damage: list[Mutation], steps: list[str]
) -> None:
    data = damaged_file(name, damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pillow_result(data, steps)
        error: TilechordError | None = None
        try:
            out = limited.process(data, steps, grid=(2, 2), format="TIFF", timeout=60)
        except TilechordError as exc:
            out, error = None, exc
    event("Pillow's result" if expected is not None else "no Pillow result")
    event(f"tilechord: {type(error).__name__ if error else 'a result'}")
    if expected is not None:  # Pillow does it all: tilechord must give the same frames
        assert out is not None, f"Pillow processes the file but tilechord raised {error!r}"
        got = pillow_frames(out)
        assert [(f.mode, f.size) for f in got] == [(f.mode, f.size) for f in expected]
        for index, (frame, want) in enumerate(zip(got, expected, strict=True)):
            assert frame.tobytes() == want.tobytes(), f"frame {index + 1} differs from Pillow's"
    elif out is None and isinstance(error, ImageTooLarge):
        assert "limit" in str(error)
    image = photo(40, 24, seed=3)  # the workers are alive and serve the next job
    assert limited.process_image(image, ["invert"], grid=(2, 1), timeout=60).tobytes() == (
        pillow(image, "invert").tobytes()
    )
    assert tilechord_keys(redis_client) == []
