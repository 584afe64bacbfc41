"""Validation of uploaded images: type, size and pixel count are checked before anything is decoded.

A decompression bomb is a small file whose header announces a huge image (a 50 kB PNG of 30000 x 30000
pixels decodes to 2.7 GB). Pillow reads only the header on `Image.open`, so the size is known before
the pixels are: a file over `max_pixels` is refused there. The format is the one Pillow detects from
the content, not the file's name. The pixels are then decoded as every reader decodes them
(`nextscale.decoding`): EXIF orientation applied, any mode (16-bit included) to RGB.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from nextscale.decoding import UndecodableImage, decode_rgb
from nextscale.ui.config import UploadLimits


class UploadError(ValueError):
    """An upload that is refused; its message is shown in the page as it is."""


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MiB"


def validate_upload(path: str | os.PathLike | None, limits: UploadLimits) -> Image.Image:
    """The uploaded file at `path` as a decoded RGB image, or UploadError saying what is wrong with it."""
    if path is None:
        raise UploadError("no file was uploaded")
    file = Path(path)
    if not file.is_file():
        raise UploadError(f"the upload {file.name} is not a regular file")
    size = file.stat().st_size
    if size == 0:
        raise UploadError(f"{file.name} is empty")
    if size > limits.max_bytes:
        raise UploadError(f"{file.name} is {_megabytes(size)}, more than the {_megabytes(limits.max_bytes)} limit")
    accepted = ", ".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                width, height, found = *image.size, image.format
            if found not in limits.formats:
                raise UploadError(f"{file.name} is a {found} image; accepted formats: {accepted}")
            if width * height > limits.max_pixels:
                raise UploadError(
                    f"{file.name} declares {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), "
                    f"more than the {limits.max_pixels / 1e6:.0f} megapixel limit (a decompression bomb?)"
                )
        # the pixels are decoded as every reader decodes them (an animation: its first frame)
        return decode_rgb(file.read_bytes(), limits.formats, limits.max_pixels)
    except UndecodableImage as error:
        if error.reason == "decompression_bomb":
            raise UploadError(f"{file.name} is refused as a decompression bomb: {error.detail}") from None
        raise UploadError(f"{file.name} could not be decoded: {error.detail}") from None
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(f"{file.name} is refused as a decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise UploadError(f"{file.name} is not an image (accepted formats: {accepted})") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise UploadError(f"{file.name} could not be decoded: {error}") from error
