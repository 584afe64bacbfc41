"""Encoded image bytes -> a PIL image, and any PIL mode -> RGB: the one decoding path of every reader.

The training data (`nextscale.data.decode`), the editing inputs (`nextscale.sampling.editing`) and the
web UI's uploads (`nextscale.ui.uploads`) all decode here, so a file reads the same everywhere: the
decoders are chosen by the caller (never every PIL plugin), the declared pixel count is checked before
any pixel is decoded, EXIF orientation is applied, and every PIL mode becomes RGB the same way (16-bit
and 32-bit grey scaled, not clipped; transparency composited on white).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DECODERS = ("JPEG", "PNG", "WEBP")
"""The decoders of the training data; PIL's other plugins (EPS through Ghostscript, among others) are
attack surface that a training set never needs."""
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class UndecodableImage(ValueError):
    """Bytes that do not decode to an image; `reason` is a short category (empty, not_an_image, truncated,
    corrupt, decompression_bomb) and `detail` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def open_image(data: bytes, formats: Sequence[str] = DECODERS, max_pixels: int = 40_000_000,
               draft: int | None = None) -> Image.Image:
    """Encoded bytes -> a loaded PIL image in its own mode, EXIF orientation applied, or UndecodableImage.

    Only the decoders in `formats` are tried, whatever the file's name says. An image declaring more than
    `max_pixels` pixels is refused from its header (PIL's own limit, twice `Image.MAX_IMAGE_PIXELS`, still
    applies on top). `draft` lets JPEG decode at 1/2 .. 1/8 scale when the shorter side stays >= it.
    """
    if not data:
        raise UndecodableImage("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; `max_pixels` is applied here instead of changing
            # PIL.Image.MAX_IMAGE_PIXELS for the whole process.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise UndecodableImage("decompression_bomb",
                                       f"{width}x{height} pixels, over max_image_pixels={max_pixels}")
            if draft is not None:
                image.draft("RGB", (draft, draft))
            image.load()  # inside the try: truncated data fails here (PIL's LOAD_TRUNCATED_IMAGES stays off)
            return ImageOps.exif_transpose(image)
    except UndecodableImage:
        raise
    except Image.DecompressionBombError as error:
        raise UndecodableImage("decompression_bomb", str(error)) from None
    except UnidentifiedImageError:
        raise UndecodableImage("not_an_image", f"not a {', '.join(formats)} file") from None
    except OSError as error:
        raise UndecodableImage("truncated" if "truncated" in str(error) else "corrupt", str(error)) from None
    except Exception as error:  # decoders fed hostile bytes raise anything (SyntaxError, ValueError, ...)
        raise UndecodableImage("corrupt", f"{type(error).__name__}: {error}") from None


def to_rgb(image: Image.Image, background: tuple[int, int, int] | None = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB. 16-bit and 32-bit grey (I;16, I, F) are scaled to 8 bit, not clipped: by 65535
    for 16-bit modes and integer images above 255, else by 255; transparency (RGBA, LA, PA, a palette or
    grey with a transparent colour) is composited on `background`, or dropped when it is None (masks)."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if background is not None and (image.mode in _ALPHA_MODES or "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes, formats: Sequence[str] = DECODERS, max_pixels: int = 40_000_000,
               draft: int | None = None) -> Image.Image:
    """Encoded bytes -> an RGB PIL image (`open_image`, then `to_rgb`), or UndecodableImage."""
    return to_rgb(open_image(data, formats, max_pixels, draft))
