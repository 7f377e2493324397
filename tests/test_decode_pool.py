"""Images are decoded in worker processes: a file that needs too much memory or time is refused with a message,
its worker is replaced, and the next file decodes as before. Nothing here is committed as a file."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from chexreason.decode_pool import DecodePool
from chexreason.images import ImageError, load_image_with_info


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


SMALL = _png(np.tile(np.arange(256, dtype=np.uint8), (64, 1)))
# 16-bit noise, 3000 x 3000: decoding and scaling it to 8 bits takes a few hundred MB and most of a second.
LARGE = _png((np.random.default_rng(0).random((3000, 3000)) * 65535).astype(np.uint16))


@pytest.fixture(scope="module")
def pool():
    decoders = DecodePool(workers=1, memory_bytes=150 * 2**20)
    yield decoders
    decoders.close()


def test_a_worker_sends_back_only_the_size_asked_for(pool):
    expected, expected_info = load_image_with_info(SMALL)  # 256 x 64
    image, info = pool.load(SMALL, resize=(112, 112, Image.Resampling.BILINEAR))
    assert image.size == (112, 112) and info == expected_info  # the info keeps the file's own size
    assert image.tobytes() == expected.resize((112, 112), Image.Resampling.BILINEAR).tobytes()
    image, _ = pool.load(SMALL, max_side=128)
    assert image.size == (128, 32)


def test_a_worker_decodes_as_the_library_does(pool):
    image, info = pool.load(SMALL)
    expected, expected_info = load_image_with_info(SMALL)
    assert info == expected_info and image.tobytes() == expected.tobytes()
    assert all(pid != os.getpid() for pid in pool.pids())  # in another process
    with pytest.raises(ImageError, match="not a PNG, JPEG or DICOM"):
        pool.load(b"plain text, not an image")  # a refusal is the library's message, and the worker lives on
    assert pool.load(SMALL)[1] == expected_info


def test_a_file_that_needs_more_memory_is_refused_and_the_next_one_decodes(pool):
    with pytest.raises(ImageError, match="memory"):
        pool.load(LARGE)  # the worker's address-space limit is 150 MB above what it holds when idle
    assert pool.load(SMALL)[0].size == (256, 64)
    default = DecodePool(workers=1)
    try:
        assert default.load(LARGE)[0].size == (3000, 3000)  # the default budget decodes it
    finally:
        default.close()


def test_a_file_that_takes_too_long_is_refused_and_its_worker_replaced():
    slow = DecodePool(workers=1, seconds=0.01)
    try:
        before = slow.pids()
        with pytest.raises(ImageError, match=r"took longer than 0\.01 s"):
            slow.load(LARGE)
        assert slow.pids() != before  # killed and replaced
        slow.seconds = 30
        assert slow.load(SMALL)[0].size == (256, 64)
    finally:
        slow.close()


def test_bad_pool_settings_are_refused():
    with pytest.raises(ValueError, match="workers >= 1"):
        DecodePool(workers=0)
