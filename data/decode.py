"""Bytes -> a square training image: decoded as every reader decodes (`nextscale.decoding`: only JPEG/PNG/WebP,
any mode to RGB), then resized and cropped."""

from __future__ import annotations

import os
import stat

import numpy as np
import torch
from PIL import Image

from nextscale.data.badinput import BadInput
from nextscale.decoding import DECODERS, UndecodableImage, decode_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _check_regular(mode: os.stat_result) -> None:
    if not stat.S_ISREG(mode.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(mode.st_mode) else "socket" if stat.S_ISSOCK(mode.st_mode) else "device"
        raise BadInput("not_a_regular_file", f"a {kind}, not a regular file")


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or raise BadInput.

    FIFOs, devices and sockets (also behind a symlink) are refused before a single byte is read: a read
    could block forever (a FIFO) or never end (/dev/zero). The file is opened non-blocking and checked on
    its descriptor, so a swap after the check cannot slip through.
    """
    try:
        _check_regular(os.stat(path))  # sockets cannot even be opened
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise BadInput("unreadable", str(error)) from None
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor)
        _check_regular(mode)
        if mode.st_size > max_bytes:
            raise BadInput("too_large", f"{mode.st_size} bytes, over max_file_bytes={max_bytes}")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as error:
            raise BadInput("unreadable", str(error)) from None
    if len(data) > max_bytes:  # grew since the check
        raise BadInput("too_large", f"over max_file_bytes={max_bytes}")
    return data


def crop_seed(seed: int, epoch: int, key: int) -> int:
    """The seed of one random crop: a pure function of the data seed, the pass over the data and the
    item (its index, or a hash of a stream sample's key), so a resumed run crops every item as the
    uninterrupted run did, whichever worker loads it."""
    return int(np.random.SeedSequence([seed, epoch, key]).generate_state(1, dtype=np.uint64)[0] >> 1)


def decode_image(data: bytes, image_size: int, crop: int | None = None,
                 max_image_pixels: int = 40_000_000) -> torch.Tensor:
    """Encoded JPEG/PNG/WebP bytes -> (3, image_size, image_size) float in [-1, 1], or raise BadInput.

    EXIF orientation is applied; the shorter side is resized to `image_size` (bicubic, antialiased)
    and the square is cropped at the centre or, with a `crop` seed (`crop_seed`), at a position drawn
    from a generator seeded with it: the same seed gives the same crop.
    """
    try:
        image = decode_rgb(data, DECODERS, max_image_pixels, draft=image_size)
    except UndecodableImage as error:
        raise BadInput(error.reason, error.detail) from None

    width, height = image.size
    side = min(width, height)
    if crop is not None:
        generator = torch.Generator().manual_seed(crop)
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
    else:
        left, top = (width - side) // 2, (height - side) // 2
    # Resizing straight from the crop box: one resampling pass, antialiased when shrinking.
    box = (left, top, left + side, top + side)
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (S, S, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1  # (3, S, S)


