"""Every reader of images (the training data, the editing inputs, the web UI's uploads) decodes through one
path (`nextscale.decoding`): a file gives the same pixels whichever reads it, in every PIL mode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data import decode_image
from nextscale.decoding import to_rgb
from nextscale.images import to_uint8
from nextscale.sampling.editing import image_to_tensor, load_image
from nextscale.ui.config import UploadLimits
from nextscale.ui.uploads import validate_upload

GREY = 128  # every picture below shows mid grey (or red, for CMYK), whatever its mode stores


def in_mode(mode: str) -> tuple[Image.Image, tuple[int, int, int]]:
    """A 16x16 picture in `mode` and the RGB colour it shows."""
    if mode == "I;16":
        return Image.fromarray(np.full((16, 16), 32896, np.uint16)), (GREY,) * 3
    if mode == "I":
        return Image.fromarray(np.full((16, 16), 32896, np.int32), mode="I"), (GREY,) * 3
    if mode == "F":
        return Image.fromarray(np.full((16, 16), float(GREY), np.float32), mode="F"), (GREY,) * 3
    if mode == "LA":  # half of it transparent: composited on white
        picture = Image.new("LA", (16, 16), (0, 255))
        picture.paste((0, 0), (0, 0, 16, 8))
        return picture, (GREY,) * 3
    if mode == "P":  # a palette whose index 1 is transparent, on half the picture
        picture = Image.new("P", (16, 16), 0)
        picture.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        picture.paste(1, (0, 0, 16, 8))
        picture.info["transparency"] = 1
        return picture, (GREY,) * 3
    if mode == "CMYK":
        return Image.new("CMYK", (16, 16), (0, 255, 255, 0)), (255, 0, 0)
    if mode == "1":  # a checkerboard of black and white
        return Image.fromarray(np.indices((16, 16)).sum(0) % 2 == 0), (GREY,) * 3
    raise AssertionError(mode)


MODES = ["I;16", "I", "F", "LA", "P", "CMYK", "1"]


def mean_rgb(tensor: torch.Tensor) -> np.ndarray:
    """(…, 3, H, W) in [-1, 1] -> the mean colour in 0..255."""
    return ((tensor.reshape(-1, 3, *tensor.shape[-2:]).mean(dim=(0, 2, 3)) + 1) * 127.5).numpy()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_the_rgb_it_shows(mode):
    picture, colour = in_mode(mode)
    assert picture.mode == mode
    rgb = np.asarray(to_rgb(picture), dtype=np.float64).mean(axis=(0, 1))
    assert np.allclose(rgb, colour, atol=2), (mode, rgb)
    # the editing inputs convert a PIL image given directly the same way
    tensor, _ = image_to_tensor(picture, 16)
    assert np.allclose(mean_rgb(tensor), colour, atol=2), mode


def saved(picture: Image.Image, path: Path) -> Path:
    picture.save(path, format="JPEG" if picture.mode == "CMYK" else "PNG")
    return path


@pytest.mark.parametrize("mode", ["I;16", "LA", "P", "CMYK", "1"])
def test_a_file_reads_the_same_in_training_editing_and_the_ui(tmp_path, mode):
    """A 16-bit PNG given to `--image` came out nearly white (mean 254.6) while training read it right."""
    picture, colour = in_mode(mode)
    path = saved(picture, tmp_path / f"picture.{'jpg' if mode == 'CMYK' else 'png'}")
    reopened = Image.open(path)
    assert reopened.mode == mode or (mode == "I;16" and reopened.mode in ("I", "I;16"))
    trained = decode_image(path.read_bytes(), 16)
    edited, _, _ = load_image(path, 16)
    uploaded = validate_upload(path, UploadLimits())
    tolerance = 6 if mode == "CMYK" else 2  # JPEG
    assert np.allclose(mean_rgb(trained), colour, atol=tolerance), mode
    assert np.allclose(mean_rgb(edited), colour, atol=tolerance), mode
    assert np.allclose(np.asarray(uploaded, dtype=np.float64).mean(axis=(0, 1)), colour, atol=tolerance), mode
    assert torch.equal(to_uint8(edited), to_uint8(image_to_tensor(uploaded, 16)[0]))


def test_exif_orientation_is_applied_by_every_reader(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored 40 wide: red left, blue right; orientation 6 turns it upright
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buffer.getvalue())
    assert validate_upload(path, UploadLimits()).size == (20, 40)
    _, size, _ = load_image(path, 16)
    assert size == (20, 40)
