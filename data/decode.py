"""Bytes -> a square training image: only JPEG/PNG/WebP decoders, any mode to RGB, resize and crop."""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nextscale.data.badinput import BadInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Decoders tried on every file, whatever its name says: only these three, because PIL's other plugins
# (EPS through Ghostscript, among others) are attack surface that a training set never needs.
_FORMATS = ("JPEG", "PNG", "WEBP")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white, 16-bit grey scaled (not clipped) to 8 bit."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


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
    if not data:
        raise BadInput("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; we apply `max_image_pixels` ourselves instead of
            # changing PIL.Image.MAX_IMAGE_PIXELS for the whole process.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        with image:
            width, height = image.size
            if width * height > max_image_pixels:
                raise BadInput("decompression_bomb",
                               f"{width}x{height} pixels, over max_image_pixels={max_image_pixels}")
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale, still >= target
            image.load()  # inside the try: truncated data fails here (PIL's LOAD_TRUNCATED_IMAGES stays off)
            image = _to_rgb(ImageOps.exif_transpose(image))
    except BadInput:
        raise
    except Image.DecompressionBombError as error:
        raise BadInput("decompression_bomb", str(error)) from None
    except UnidentifiedImageError:
        raise BadInput("not_an_image", "not a JPEG, PNG or WebP file") from None
    except OSError as error:
        raise BadInput("truncated" if "truncated" in str(error) else "corrupt", str(error)) from None
    except Exception as error:  # decoders fed hostile bytes raise anything (SyntaxError, ValueError, ...)
        raise BadInput("corrupt", f"{type(error).__name__}: {error}") from None

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


