"""Data layer: synthetic portraits, the image folder (hostile files included) and WebDataset shards."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data import (
    DataConfig,
    HeldOutConfig,
    TooManyBadFiles,
    build_dataset,
    collate,
    crop_seed,
    decode_image,
    loader_over,
    make_dataloader,
)
from nextscale.data.sources.folder import ImageFolderDataset
from nextscale.portraits.attributes import ATTRIBUTES, ZOOM_LEVELS, sample_attributes, visible_attributes
from nextscale.portraits.captions import (
    COARSE_ATTRIBUTES,
    DETAIL_ATTRIBUTES,
    caption_from_attributes,
    detail_caption,
    layout_caption,
    sample_caption,
)
from nextscale.portraits.render import render_portrait, view_window
from nextscale.portraits.source import SyntheticConfig, SyntheticPortraits

# ---------------------------------------------------------------------------------------------- synthetic

# Words a caption must contain for each (attribute, value), whatever the wording (any of them).
KEYWORDS = {
    ("gender", "man"): (r"\bman\b",), ("gender", "woman"): (r"\bwoman\b",),
    ("beard", "yes"): ("beard",), ("beard", "no"): ("clean-shaven", "without a beard"),
    ("glasses", "yes"): ("glasses", "bespectacled"), ("glasses", "no"): ("without glasses", "no glasses"),
    ("smile", "yes"): ("smil",), ("smile", "no"): ("serious", "neutral expression", "closed mouth"),
}


def mentions(caption: str, key: str, value: str) -> bool:
    patterns = KEYWORDS.get((key, value), (rf"\b{value}\b",))
    return any(re.search(pattern, caption) for pattern in patterns)


def test_synthetic_items_are_deterministic_per_seed_and_index():
    first = SyntheticPortraits(SyntheticConfig(size=32, seed=0, length=8))
    again = SyntheticPortraits(SyntheticConfig(size=32, seed=0, length=8))
    other = SyntheticPortraits(SyntheticConfig(size=32, seed=1, length=8))
    for index in (0, 5):
        a, b = first[index], again[index]
        assert torch.equal(a["image"], b["image"])
        assert a["caption"] == b["caption"] and a["attributes"] == b["attributes"]
    assert not torch.equal(first[0]["image"], first[1]["image"])
    assert not any(torch.equal(first[i]["image"], other[i]["image"]) for i in range(8))
    with pytest.raises(IndexError):
        first[8]


def test_synthetic_item_format():
    item = SyntheticPortraits(SyntheticConfig(size=64, length=4))[2]
    image = item["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.1
    assert isinstance(item["caption"], str) and item["caption"]
    assert item["attributes"].keys() == ATTRIBUTES.keys()
    assert all(value in ATTRIBUTES[key] for key, value in item["attributes"].items())


def test_sampled_attributes_respect_constraints_and_rates():
    rng = np.random.default_rng(0)
    draws = [sample_attributes(rng) for _ in range(4000)]
    men = [d for d in draws if d["gender"] == "man"]
    women = [d for d in draws if d["gender"] == "woman"]
    assert all(d["beard"] == "no" for d in women)
    assert 0.4 < np.mean([d["beard"] == "yes" for d in men]) < 0.6
    assert 0.33 < np.mean([d["glasses"] == "yes" for d in draws]) < 0.47
    assert np.mean([d["hair_length"] == "long" for d in women]) > 0.7
    assert np.mean([d["hair_length"] == "short" for d in men]) > 0.7
    for key, values in ATTRIBUTES.items():
        assert {d[key] for d in draws} == set(values)


@pytest.mark.parametrize("size", [48, 64, 128])
def test_render_any_size(size):
    attributes = sample_attributes(np.random.default_rng(3))
    pixels = render_portrait(attributes, size, np.random.default_rng(4))
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("key", "rows"), [("glasses", (0.3, 0.5)), ("smile", (0.45, 0.7)), ("beard", (0.3, 0.78))]
)
def test_attribute_edits_are_large_and_local(key, rows):
    """Same seed, one attribute flipped: a clear change, and only in that feature's band of rows."""
    base = {"gender": "man", "beard": "no", "glasses": "no", "hair_color": "brown", "hair_length": "short",
            "skin": "light", "background": "blue", "smile": "no"}
    before = render_portrait(base, 64, np.random.default_rng(7)).astype(np.float32)
    after = render_portrait({**base, key: "yes"}, 64, np.random.default_rng(7)).astype(np.float32)
    change = np.abs(after - before).max(axis=2)  # (H, W)
    top, bottom = int(rows[0] * 64), int(rows[1] * 64)
    assert (change[top:bottom] > 60).sum() >= 20, f"{key} barely visible"
    assert change[:top - 3].max() < 1 and change[bottom + 3:].max() < 1, f"{key} changed pixels far away"


def test_canonical_captions_of_partial_attributes():
    assert caption_from_attributes({"beard": "yes"}) == "a man with a beard"
    assert caption_from_attributes({"hair_color": "red"}) == "a person with red hair"
    assert caption_from_attributes({"gender": "woman", "smile": "yes", "hair_color": "red"}) == (
        "a smiling woman with red hair"
    )
    full = sample_attributes(np.random.default_rng(1))
    assert caption_from_attributes(full) == caption_from_attributes(dict(full))  # deterministic
    for key, values in ATTRIBUTES.items():
        for value in values:
            assert mentions(caption_from_attributes({key: value}), key, value), (key, value)
    assert "beard" not in caption_from_attributes({"gender": "woman", "beard": "no"})
    with pytest.raises(ValueError, match="unknown attribute"):
        caption_from_attributes({"hat": "yes"})


def test_varied_captions_mention_every_requested_attribute():
    rng = np.random.default_rng(0)
    keys = list(ATTRIBUTES)
    for _ in range(300):
        chosen = rng.choice(keys, size=3, replace=False)
        attributes = {str(k): str(rng.choice(ATTRIBUTES[k])) for k in chosen}
        if attributes.get("gender") == "woman" and attributes.get("beard") == "yes":
            continue
        caption = caption_from_attributes(attributes, rng)
        for key, value in attributes.items():
            if not (key == "beard" and value == "no" and attributes.get("gender") == "woman"):
                assert mentions(caption, key, value), (attributes, caption)


def test_training_captions_are_varied_and_partial():
    rng = np.random.default_rng(0)
    attributes = sample_attributes(rng)
    captions = [sample_caption(attributes, rng) for _ in range(200)]
    assert len(set(captions)) > 50
    assert any(attributes["background"] not in c for c in captions)  # not always everything
    assert np.mean([mentions(c, "gender", attributes["gender"]) for c in captions]) > 0.8


def stated_coarse(caption: str, key: str) -> list[str]:
    """The values of a coarse attribute a caption states ("red hair", "red-haired", "on a red background")."""
    noun = {"background": r" (background|wall)", "hair_color": r"[- ]hair", "skin": r"[- ]skin"}[key]
    return [value for value in ATTRIBUTES[key] if re.search(rf"\b{value}{noun}", caption)]


def stated_fine(caption: str, key: str) -> str | None:
    """"yes" / "no" where a caption states glasses, beard or smile, else None."""
    negative = {"glasses": r"(without|no) glasses", "beard": r"clean-shaven|without a beard",
                "smile": r"serious|neutral expression|closed mouth"}[key]
    positive = {"glasses": r"glasses|bespectacled", "beard": r"beard", "smile": r"smil"}[key]
    if re.search(negative, caption):
        return "no"
    return "yes" if re.search(positive, caption) else None


def mixing_caption_trials(make: Callable[..., str]) -> Iterator[tuple[dict[str, str], str, dict[str, list[str]]]]:
    """600 (attributes, caption, the coarse values it states) of a mixing-caption function over the zoom
    levels; every caption states a coarse attribute and never names the other gender."""
    rng = np.random.default_rng(0)
    for trial in range(600):
        attributes, level = sample_attributes(rng), ZOOM_LEVELS[trial % 3]
        caption = make(attributes, rng, level)
        stated = {key: stated_coarse(caption, key) for key in COARSE_ATTRIBUTES if key in visible_attributes(level)}
        assert any(stated.values()), caption
        other = "woman" if attributes["gender"] == "man" else "man"
        assert not re.search(rf"\b{other}\b", caption), (attributes, caption)
        yield attributes, caption, stated


def test_detail_captions_keep_the_fine_attributes_and_contradict_a_coarse_one():
    """Mixing regularisation's second caption: true about glasses, beard, smile and gender wherever it
    names them, wrong about at least one coarse attribute the level shows, never right about one."""
    named = {key: 0 for key in ("glasses", "beard", "smile")}
    for attributes, caption, stated in mixing_caption_trials(detail_caption):
        assert all(attributes[key] not in values for key, values in stated.items()), (attributes, caption)
        for key in named:
            said = stated_fine(caption, key)
            assert said in (None, attributes[key]), (attributes, caption)
            named[key] += said is not None
    assert min(named.values()) > 60, named  # the fine attributes are named, not left out
    assert detail_caption(attributes, np.random.default_rng(1), 1) == detail_caption(
        attributes, np.random.default_rng(1), 1)  # a function of the generator's state


def test_layout_captions_keep_the_coarse_attributes_and_contradict_a_detail_one():
    """The first caption of a mixed item for a layout-context model: true about every coarse attribute it
    names (at least one), wrong about at least one detail attribute (a beard for men only), never right
    about one."""
    for attributes, caption, stated in mixing_caption_trials(layout_caption):
        assert all(values in ([], [attributes[key]]) for key, values in stated.items()), (attributes, caption)
        said = {key: stated_fine(caption, key) for key in DETAIL_ATTRIBUTES}
        assert any(value is not None for value in said.values()), (attributes, caption)
        assert all(value in (None, *[v for v in ("yes", "no") if v != attributes[key]])
                   for key, value in said.items()), (attributes, caption)
        if attributes["gender"] == "woman":
            assert said["beard"] is None, caption


# ------------------------------------------------------------------------------------------------- zoom


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_view_windows_nest_at_the_image_centre():
    assert view_window(1) == (0.0, 1.0) and view_window(2) == (0.25, 0.75) and view_window(4) == (0.375, 0.625)


@pytest.mark.parametrize("index", [0, 3, 7])
def test_each_zoom_level_is_the_native_centre_half_of_the_one_before(index):
    """Level 2z area-pooled 2x matches the centre half of level z (up to anti-aliasing), while it holds
    detail that upsampling that crop does not (it is rendered, not magnified)."""
    attributes = sample_attributes(np.random.default_rng([0, index]))
    levels = {z: render_portrait(attributes, 64, np.random.default_rng([0, index]), z) for z in ZOOM_LEVELS}
    for parent, child in ((levels[1], levels[2]), (levels[2], levels[4])):
        crop = parent[16:48, 16:48]  # (32, 32, 3)
        pooled = child.astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        magnified = crop.repeat(2, axis=0).repeat(2, axis=1)
        assert psnr_uint8(pooled, crop) > 32
        assert psnr_uint8(child, magnified) < psnr_uint8(pooled, crop) - 5
    assert not np.array_equal(levels[1], levels[2])


def test_zoom_only_changes_the_view_of_the_same_portrait():
    attributes = sample_attributes(np.random.default_rng(9))
    default = render_portrait(attributes, 64, np.random.default_rng(9))
    assert np.array_equal(default, render_portrait(attributes, 64, np.random.default_rng(9), zoom=1))
    with pytest.raises(ValueError, match="zoom"):
        render_portrait(attributes, 64, np.random.default_rng(9), zoom=3)


def test_visible_attributes_per_level():
    assert visible_attributes(1) == tuple(ATTRIBUTES) == visible_attributes(2)
    close = visible_attributes(4)
    assert {"gender", "beard", "glasses", "skin", "smile"} == set(close)
    assert not {"background", "hair_length", "hair_color"} & set(close)
    with pytest.raises(ValueError, match="zoom level"):
        visible_attributes(3)


def test_background_and_hair_length_barely_show_at_4x():
    """Changing the background or the hair length changes a large part of the 1x and 2x views and at most
    slivers in the corners of the 4x view (why they are not counted as visible there)."""
    other = {"background": {"yellow": "blue"}, "hair_length": {"short": "long", "long": "short"}}
    changed: dict[tuple[str, int], list[float]] = {}
    for index in range(24):
        attributes = sample_attributes(np.random.default_rng([0, index]))
        for key, swap in other.items():
            edited = {**attributes, key: swap.get(attributes[key], "yellow")}
            for level in ZOOM_LEVELS:
                before = render_portrait(attributes, 64, np.random.default_rng([0, index]), level).astype(np.float32)
                after = render_portrait(edited, 64, np.random.default_rng([0, index]), level).astype(np.float32)
                changed.setdefault((key, level), []).append(float((np.abs(after - before).max(2) > 30).mean()))
    for key in other:
        assert min(np.mean(changed[key, 1]), np.mean(changed[key, 2])) > 0.1, key
        assert np.mean(changed[key, 4]) < 0.04 and max(changed[key, 4]) < 0.1, key


def test_captions_per_level_name_only_visible_attributes():
    assert caption_from_attributes({"glasses": "yes"}, level=2) == "a close-up of the face of a person with glasses"
    assert caption_from_attributes({"gender": "man", "glasses": "yes"}, level=4) == (
        "an extreme close-up of the eyes of a man with glasses"
    )
    with pytest.raises(ValueError, match="not visible at zoom level 4"):
        caption_from_attributes({"background": "red"}, level=4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        attributes = sample_attributes(rng)
        close = sample_caption(attributes, rng, level=4)
        assert close.startswith(("an extreme close-up", "extreme close-up")), close
        assert not re.search(r"hair|background|wall|-haired", close), close
        for level in (1, 2):
            caption = sample_caption(attributes, rng, level=level)
            assert ("close-up" in caption) == (level == 2), caption


def test_synthetic_zoom_levels_are_deterministic_and_keep_the_portrait():
    config = SyntheticConfig(size=32, length=60, zoom_levels=(1, 2, 4))
    mixed, again = SyntheticPortraits(config), SyntheticPortraits(config)
    plain = SyntheticPortraits(SyntheticConfig(size=32, length=60))
    items = [mixed[i] for i in range(60)]
    assert {item["zoom"] for item in items} == {1, 2, 4}
    for i, item in enumerate(items):
        assert item["zoom"] == again[i]["zoom"] == config.zoom_level(i)
        assert torch.equal(item["image"], again[i]["image"])
        assert item["attributes"] == plain[i]["attributes"]  # the same person, seen at another level
        if item["zoom"] == 1:
            assert torch.equal(item["image"], plain[i]["image"]) and item["caption"] == plain[i]["caption"]
    assert plain[0]["zoom"] == 1
    batch = collate(items[:4])
    assert batch["zoom"].tolist() == [item["zoom"] for item in items[:4]]
    with pytest.raises(ValueError, match="zoom_levels"):
        SyntheticConfig(zoom_levels=(3,))
    with pytest.raises(ValueError, match="synthetic source only"):
        DataConfig(source="folder", path="images", zoom_levels=(1, 2))
    assert build_dataset(DataConfig(image_size=32, synthetic_length=8, zoom_levels=(4,)))[0]["zoom"] == 4


# ----------------------------------------------------------------------------------------------- folder


def encoded(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **kwargs)
    return buffer.getvalue()


def noise_image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_declaring(width: int, height: int) -> bytes:
    """A few-byte PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def write_good_folder(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.jpg").write_bytes(encoded(noise_image(seed=1), "JPEG"))
    (root / "sub" / "b.png").write_bytes(encoded(noise_image(seed=2), "PNG"))
    (root / "sub" / "deeper" / "c.webp").write_bytes(encoded(noise_image(seed=3), "WEBP"))
    (root / "sub" / "deeper" / "c.txt").write_text("  a sidecar caption \n")
    (root / "UPPER.JPG").write_bytes(encoded(noise_image(seed=4), "JPEG"))
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.jpg", "text": "caption of a"}) + "\n\n"
        + json.dumps({"file_name": "sub/b.png", "text": "caption of b"}) + "\n"
    )


def folder_config(root: Path, **overrides) -> DataConfig:
    return DataConfig(**{"source": "folder", "path": str(root), "image_size": 16, **overrides})


def test_folder_captions_formats_and_nesting(tmp_path, caplog):
    write_good_folder(tmp_path)
    dataset = ImageFolderDataset(folder_config(tmp_path))
    assert "1 of 4 images" in caplog.text  # UPPER.JPG has no caption
    captions = {name: dataset[i]["caption"] for i, name in enumerate(dataset.files)}
    assert captions == {"UPPER.JPG": "", "a.jpg": "caption of a", "sub/b.png": "caption of b",
                        "sub/deeper/c.webp": "a sidecar caption"}
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # a folder adds no fields of its own: the batch carries only what every source has
    assert set(batch) == {"image", "caption", "index"} and dataset.tracker.bad == 0


def test_malformed_metadata_lines_are_skipped_and_counted_like_bad_files(tmp_path, caplog):
    write_good_folder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "ok"}\nnot json\n{"text": "no name"}\n')
    dataset = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=1.0))
    assert dict(dataset.tracker.counts) == {"bad_metadata": 2}
    assert "metadata.jsonl:2 (bad_metadata)" in caplog.text
    assert dataset[dataset.files.index("a.jpg")]["caption"] == "ok"
    # the bad-fraction threshold covers them: 2 bad lines of 6 inputs tried is over 10%
    small = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=0.1))
    with pytest.raises(TooManyBadFiles, match="bad_metadata: 2"):
        for index in range(len(small)):
            small[index]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
def test_only_regular_files_are_read_with_a_byte_cap(tmp_path):
    """A FIFO named like an image would block a read forever, /dev/zero never ends: both are skipped unread."""
    import os
    import socket

    write_good_folder(tmp_path)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.webp"))
    (tmp_path / "big.png").write_bytes(encoded(noise_image(200, 200), "PNG"))
    dataset = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=1.0, max_file_bytes=60_000))
    items = [dataset[i] for i in range(len(dataset))]
    server.close()
    assert all(item["image"].shape == (3, 16, 16) for item in items)
    assert dict(dataset.tracker.counts) == {"not_a_regular_file": 3, "too_large": 1}


@pytest.mark.parametrize(
    ("image", "format", "expected_rgb"),
    [
        (Image.new("L", (20, 20), 200), "PNG", (200, 200, 200)),
        (Image.new("RGB", (20, 20), (30, 160, 90)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG",
         (30, 160, 90)),
        (Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent -> white
        (Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (Image.fromarray(np.full((20, 20), 32768, np.uint16)), "PNG", (128, 128, 128)),  # 16-bit, not clipped
    ],
    ids=["grey", "palette", "rgba", "cmyk", "16-bit"],
)
def test_any_mode_becomes_rgb(image, format, expected_rgb):
    decoded = decode_image(encoded(image, format), 8)  # (3, 8, 8)
    rgb = ((decoded.mean(dim=(1, 2)) + 1) * 127.5).tolist()
    assert np.allclose(rgb, expected_rgb, atol=12), (rgb, expected_rgb)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40x20, left half red, right half blue; orientation 6 shows it turned 90 degrees clockwise:
    # 20 wide, 40 tall, red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rotated.jpg").write_bytes(encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95))
    image = ImageFolderDataset(folder_config(tmp_path))[0]["image"]  # (3, 16, 16): rows 8..24 of 16x32
    top, bottom = image[:, :4].mean(dim=(1, 2)), image[:, -4:].mean(dim=(1, 2))
    assert top[0] > 0.7 and top[2] < -0.7, "top should be red"
    assert bottom[2] > 0.7 and bottom[0] < -0.7, "bottom should be blue"


def test_random_crop_moves_along_the_longer_side():
    data = encoded(noise_image(width=64, height=16), "PNG")
    centre = [decode_image(data, 16) for _ in range(2)]
    assert torch.equal(centre[0], centre[1])
    crops = [decode_image(data, 16, crop_seed(0, epoch, 3)) for epoch in range(8)]
    assert len({tuple(crop.flatten()[:16].tolist()) for crop in crops}) > 2  # another crop each pass
    assert torch.equal(decode_image(data, 16, crop_seed(0, 5, 3)), crops[5])  # the seed alone decides
    state = torch.get_rng_state()
    decode_image(data, 16, crop_seed(0, 5, 3))
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator is left alone


def test_crop_seeds_differ_by_seed_pass_and_item():
    seeds = {crop_seed(seed, epoch, key) for seed in range(3) for epoch in range(3) for key in range(3)}
    assert len(seeds) == 27 and all(0 <= seed < 2**63 for seed in seeds)
    assert crop_seed(1, 2, 3) == crop_seed(1, 2, 3)


def write_hostile_files(root: Path) -> dict[str, int]:
    """Bad files next to good ones; returns the expected count per reason."""
    jpeg, png = encoded(noise_image(), "JPEG"), encoded(noise_image(), "PNG")
    corrupt = bytearray(png)
    middle = slice(len(png) // 3, len(png) // 3 + 50)
    corrupt[middle] = bytes(b ^ 0xFF for b in corrupt[middle])  # valid header, broken compressed data
    (root / "bad").mkdir()
    (root / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "bad" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "bad" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "bad" / "notes.png").write_text("this is a text file, not an image\n")
    (root / "bad" / "empty.webp").write_bytes(b"")
    (root / "bad" / "bomb.png").write_bytes(png_declaring(100_000, 100_000))  # refused by PIL itself
    (root / "bad" / "large.png").write_bytes(encoded(Image.new("L", (200, 200)), "PNG"))  # over our limit
    return {"truncated": 2, "corrupt": 1, "not_an_image": 2, "empty": 1, "decompression_bomb": 2}


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    write_good_folder(tmp_path)
    expected = write_hostile_files(tmp_path)
    dataset = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=1.0, max_image_pixels=10_000))
    items = [dataset[i] for i in range(len(dataset))]  # every index yields a good item
    assert all(item["image"].shape == (3, 16, 16) for item in items)
    assert dict(dataset.tracker.counts) == expected
    assert "truncated.png (truncated)" in caplog.text and "bomb.png (decompression_bomb)" in caplog.text
    assert dataset.tracker.attempts == len(dataset)
    caplog.clear()  # a second epoch: the same files, neither counted nor reported again
    for i in range(len(dataset)):
        dataset[i]
    assert dict(dataset.tracker.counts) == expected and dataset.tracker.attempts == len(dataset)
    assert "skipping" not in caplog.text
    loader = make_dataloader(folder_config(tmp_path, max_bad_fraction=1.0, max_image_pixels=10_000),
                             batch_size=4, shuffle=True, drop_last=False)
    assert sum(len(batch["caption"]) for batch in loader) == len(dataset)  # batches keep their size


def test_too_many_bad_files_abort_with_a_clear_message(tmp_path):
    write_good_folder(tmp_path)
    write_hostile_files(tmp_path)
    loader = make_dataloader(folder_config(tmp_path, max_bad_fraction=0.25), batch_size=2, shuffle=False)
    with pytest.raises(TooManyBadFiles, match=r"max_bad_fraction=0.25.*raise max_bad_fraction") as error:
        for _ in loader:
            pass
    assert str(error.value).startswith(
        "7 of 12 inputs skipped (corrupt: 1, decompression_bomb: 1, empty: 1, not_an_image: 2, truncated: 2)"
    )


def test_all_bad_folder_raises_instead_of_hanging(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("nope")
    dataset = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=1.0))
    with pytest.raises(TooManyBadFiles, match="no readable image"):
        dataset[1]


def test_abort_propagates_from_worker_processes(tmp_path):
    for i in range(4):
        (tmp_path / f"bad{i}.png").write_bytes(b"")
    (tmp_path / "good.png").write_bytes(encoded(noise_image(), "PNG"))
    batches = iter(make_dataloader(folder_config(tmp_path), batch_size=1, shuffle=False, num_workers=2))
    with pytest.raises(TooManyBadFiles, match="empty: "):  # the same type, re-raised in the main process
        for _ in batches:
            pass
    # The failed iterator sits in a reference cycle with its exception; left to the cyclic GC, its
    # workers would be joined with a 5 s timeout each, stalling whichever test comes next.
    batches._shutdown_workers()


def test_config_validation():
    with pytest.raises(ValueError, match="needs a path"):
        DataConfig(source="folder")
    known = "class-folder, folder, synthetic, webdataset"
    with pytest.raises(ValueError, match=f"unknown data source .folders.; choose one of {known}"):
        DataConfig(source="folders", path="x")


def test_synthetic_loader_batches():
    config = DataConfig(image_size=32, synthetic_length=6)
    batch = next(iter(make_dataloader(config, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert len(batch["caption"]) == 4 and batch["attributes"][0].keys() == ATTRIBUTES.keys()


# ------------------------------------------------------------------------------------------ webdataset


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path) -> str:
    with tarfile.open(root / "shard-00000.tar", "w") as tar:
        add_member(tar, "s000.jpg", encoded(noise_image(seed=0), "JPEG"))
        add_member(tar, "s000.txt", b"first caption\n")
        add_member(tar, "s001.png", encoded(noise_image(seed=1), "PNG"))
        add_member(tar, "s001.txt", "caf\u00e9 caption".encode())
    with tarfile.open(root / "shard-00001.tar", "w") as tar:
        add_member(tar, "s002.webp", encoded(noise_image(seed=2), "WEBP"))
        add_member(tar, "s002.json", json.dumps({"text": "json text"}).encode())
        add_member(tar, "s003.jpg", encoded(noise_image(seed=3), "JPEG"))
        add_member(tar, "s003.json", json.dumps({"caption": "json caption"}).encode())
        add_member(tar, "s004.jpg", b"not a jpeg at all")
        add_member(tar, "s004.txt", b"caption of a broken image")
    return str(root / "shard-{00000..00001}.tar")


WDS_CAPTIONS = ["caf\u00e9 caption", "first caption", "json caption", "json text"]


@pytest.mark.parametrize(("shuffle", "num_workers"), [(False, 0), (True, 0), (True, 2)])
def test_webdataset_shards(tmp_path, shuffle, num_workers):
    pytest.importorskip("webdataset")
    config = DataConfig(source="webdataset", path=write_shards(tmp_path), image_size=16, max_bad_fraction=0.5)
    loader = make_dataloader(config, batch_size=2, shuffle=shuffle, num_workers=num_workers, drop_last=False)
    batches = list(loader)
    assert sorted(c for batch in batches for c in batch["caption"]) == WDS_CAPTIONS  # no loss, no repeats
    assert all(batch["image"].shape[1:] == (3, 16, 16) for batch in batches)
    if num_workers == 0:
        assert dict(loader.dataset.tracker.counts) == {"not_an_image": 1}


def test_an_empty_or_short_shard_is_named_when_training_gets_no_batch(tmp_path):
    pytest.importorskip("webdataset")
    from conftest import tiny_tokenizer_config

    from nextscale.train.tokenizer_loop import TokenizerTrainConfig, train_tokenizer

    with tarfile.open(tmp_path / "short.tar", "w") as tar:
        add_member(tar, "s000.jpg", encoded(noise_image(seed=0), "JPEG"))
        add_member(tar, "s000.txt", b"one caption\n")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    data = DataConfig(source="webdataset", path=str(tmp_path / "{short,empty}.tar"), image_size=16)
    config = TokenizerTrainConfig(output_dir=str(tmp_path / "run"), model=tiny_tokenizer_config(), data=data,
                                  eval_data=HeldOutConfig(source="synthetic"), steps=2, batch_size=4,
                                  mixed_precision="no", tracker="none", eval_images=8)
    with pytest.raises(ValueError, match=r"no batch of 4 in a whole pass.*short.tar: 1.*empty.tar: 0"):
        train_tokenizer(config)


def test_webdataset_with_more_readers_than_shards(tmp_path):
    pytest.importorskip("webdataset")
    path = write_shards(tmp_path)
    config = DataConfig(source="webdataset", path=path.replace("{00000..00001}", "00001"), image_size=16,
                        max_bad_fraction=0.5)
    loader = make_dataloader(config, batch_size=1, shuffle=False, num_workers=2, drop_last=False)
    assert sorted(c for batch in loader for c in batch["caption"]) == ["json caption", "json text"]


def test_webdataset_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # makes `import webdataset` fail
    with pytest.raises(ImportError, match=r"pip install 'nextscale\[data\]'"):
        build_dataset(DataConfig(source="webdataset", path=str(tmp_path / "{0..1}.tar")))


def test_the_transformer_holds_out_data_it_never_trains_on_for_every_source(tmp_path, monkeypatch):
    from nextscale.data.split import evaluation_split

    folder = tmp_path / "folder"
    folder.mkdir()
    for index in range(20):
        (folder / f"{index:02d}.png").write_bytes(encoded(noise_image(seed=index), "PNG"))
    walks = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda *args, **kwargs: walks.append(args[0]) or real_walk(*args, **kwargs))
    split = evaluation_split(folder_config(folder), None)
    assert walks == [folder]  # the held-out part shares the training part's scan of the folder
    assert split.evaluation.dataset.files is split.train.dataset.files
    assert list(split.evaluation.indices) == [9, 19]
    assert list(split.train.indices) == [i for i in range(20) if i not in (9, 19)]
    assert split.description == f"every 10th of 20 items of {folder} (2), never trained on"
    # with random crops, the held-out items stay the same whatever pass the training has reached
    from nextscale.train.runtime import set_data_epoch

    cropped = evaluation_split(folder_config(folder, random_crop=True, image_size=8), None)
    before = [cropped.evaluation[i]["image"] for i in range(2)]
    set_data_epoch(torch.utils.data.DataLoader(cropped.train), 3)
    assert cropped.train[0]["image"].shape == (3, 8, 8)
    assert all(torch.equal(cropped.evaluation[i]["image"], image) for i, image in enumerate(before))
    given = evaluation_split(folder_config(folder), DataConfig(image_size=16))
    assert len(given.train) == 20 and given.description.startswith("--eval-data (synthetic")
    synthetic = evaluation_split(DataConfig(image_size=16, synthetic_length=8), None)
    assert synthetic.evaluation.config.seed != synthetic.train.config.seed
    if pytest.importorskip("webdataset"):
        (tmp_path / "shards").mkdir()
        pattern = write_shards(tmp_path / "shards")
        shards = evaluation_split(DataConfig(source="webdataset", path=pattern, image_size=16), None)
        assert [Path(url).name for url in shards.train.urls] == ["shard-00000.tar"]
        assert [Path(url).name for url in shards.evaluation.urls] == ["shard-00001.tar"]
        single = str(tmp_path / "shards" / "shard-00000.tar")
        alone = evaluation_split(DataConfig(source="webdataset", path=single, image_size=16), None)
        assert alone.evaluation is None and "pass --eval-data.path DIR" in alone.description


def test_every_pass_crops_anew_even_in_persistent_workers(tmp_path):
    """The runtime tells the folder (under its Subset) which pass begins; workers that outlive a pass
    see it, so an image gets another crop next pass, and the same crop as any other run of that pass."""
    from torch.utils.data import Subset

    from nextscale.train.runtime import endless_batches

    for index in range(8):
        (tmp_path / f"{index}.png").write_bytes(encoded(noise_image(width=64, height=16, seed=index), "PNG"))
    dataset = Subset(ImageFolderDataset(folder_config(tmp_path, random_crop=True)), list(range(8)))

    def two_passes() -> list[dict[int, torch.Tensor]]:
        loader = loader_over(dataset, batch_size=4, shuffle=False, num_workers=2)
        batches = endless_batches(None, loader)
        passes = []
        for _ in range(2):
            crops = {}
            for batch in (next(batches), next(batches)):
                crops |= {int(i): image for i, image in zip(batch["index"], batch["image"])}
            passes.append(crops)
        return passes

    first, second = two_passes()
    assert sorted(first) == sorted(second) == list(range(8))
    assert sum(not torch.equal(first[i], second[i]) for i in range(8)) >= 6  # mostly other crops
    again = two_passes()
    assert all(torch.equal(again[p][i], (first, second)[p][i]) for p in range(2) for i in range(8))


# ----------------------------------------------------------------------------------- one caption rule


def test_a_caption_that_is_not_a_string_is_bad_metadata_in_every_source(tmp_path, caplog):
    """`null`, numbers, lists and objects became their Python text ("None", "['list', 'caption']") unwarned."""
    write_good_folder(tmp_path)
    lines = [{"file_name": "a.jpg", "text": None}, {"file_name": "sub/b.png", "text": 7},
             {"file_name": "UPPER.JPG", "caption": ["list", "caption"]},
             {"file_name": "sub/deeper/c.webp", "text": {"an": "object"}}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = ImageFolderDataset(folder_config(tmp_path, max_bad_fraction=1.0))
    assert dict(dataset.tracker.counts) == {"bad_metadata": 4}
    assert "metadata.jsonl:3 (bad_metadata)" in caplog.text and "not a string" in caplog.text
    captions = {name: dataset[i]["caption"] for i, name in enumerate(dataset.files)}
    # the record's caption is not used: the image falls back to its sidecar .txt, else the empty caption
    assert captions == {"UPPER.JPG": "", "a.jpg": "", "sub/b.png": "", "sub/deeper/c.webp": "a sidecar caption"}
    pytest.importorskip("webdataset")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for key, record in (("s0", {"text": None}), ("s1", {"caption": ["a", "list"]}), ("s2", {"text": "fine"})):
            add_member(tar, f"{key}.png", encoded(noise_image(seed=1), "PNG"))
            add_member(tar, f"{key}.json", json.dumps(record).encode())
    stream = build_dataset(DataConfig(source="webdataset", path=str(tmp_path / "shard.tar"), image_size=16,
                                      max_bad_fraction=1.0))
    assert sorted(item["caption"] for item in stream) == ["", "", "fine"]
    assert dict(stream.tracker.counts) == {"bad_metadata": 2}


# ------------------------------------------------------------------------- counts across worker processes


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_counts_are_exact_with_any_number_of_workers(tmp_path, num_workers):
    """With --num-workers 2, metrics.json reported the 5 bad metadata lines read in the main process but not
    the 11 bad image files the workers met."""
    write_good_folder(tmp_path)
    expected = write_hostile_files(tmp_path)
    with (tmp_path / "metadata.jsonl").open("a") as handle:
        handle.write("not json\n" + json.dumps({"file_name": "a.jpg", "text": None}) + "\n")
    config = folder_config(tmp_path, max_bad_fraction=1.0, max_image_pixels=10_000)
    dataset = ImageFolderDataset(config)
    loader = loader_over(dataset, batch_size=2, shuffle=True, num_workers=num_workers, drop_last=False)
    for _ in range(2):  # two passes: a file met again is not counted again
        assert sum(len(batch["caption"]) for batch in loader) == len(dataset)
    assert dict(dataset.tracker.counts) == {**expected, "bad_metadata": 2}
    assert dataset.tracker.attempts == len(dataset) + 2  # every file once, and the bad metadata lines
    if pytest.importorskip("webdataset"):
        shards = DataConfig(source="webdataset", path=write_shards(tmp_path), image_size=16, max_bad_fraction=0.5)
        stream = build_dataset(shards)
        assert len(list(loader_over(stream, 1, shuffle=False, num_workers=num_workers))) == 4
        assert dict(stream.tracker.counts) == {"not_an_image": 1}


# ------------------------------------------------------------------------------------ one split rule


def numbered_folder(root: Path, count: int, bad: tuple[int, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        data = b"" if index in bad else encoded(noise_image(seed=index), "PNG")
        (root / f"{index:02d}.png").write_bytes(data)
    return root


def test_held_out_and_training_parts_never_share_an_item_even_with_bad_files(tmp_path):
    """A bad held-out file was replaced by the next readable one, which could be a training image (the last
    held-out file wraps round to the first); a bad training file could likewise yield a held-out image."""
    from nextscale.data.split import evaluation_split

    folder = numbered_folder(tmp_path / "folder", 40, bad=(9, 18, 39))  # held out: 9, 19, 29, 39
    split = evaluation_split(folder_config(folder, max_bad_fraction=1.0), None)
    assert list(split.evaluation.indices) == [9, 19, 29, 39]

    def names(part) -> list[str]:
        return [part.dataset.files[part[i]["index"]] for i in range(len(part))]

    held, trained = names(split.evaluation), names(split.train)
    assert set(held) <= {"19.png", "29.png"} and not set(held) & set(trained)
    assert set(trained) == {f"{i:02d}.png" for i in range(40)} - {"09.png", "18.png", "19.png", "29.png", "39.png"}
    assert dict(split.train.dataset.tracker.counts) == {"empty": 1}
    assert dict(split.evaluation.dataset.tracker.counts) == {"empty": 2}


def test_one_split_rule_that_depends_on_the_data_alone(tmp_path):
    """The tokenizer held out every 39th image and the transformer every 19th (their --eval-images differ):
    the transformer's held-out images had been seen by the tokenizer."""
    import inspect

    from nextscale.data.split import HELD_OUT_ITEMS, evaluation_split

    assert list(inspect.signature(evaluation_split).parameters) == ["data", "eval_data"]
    folder = numbered_folder(tmp_path / "folder", 60)
    first, second = evaluation_split(folder_config(folder), None), evaluation_split(folder_config(folder), None)
    assert list(first.evaluation.indices) == list(second.evaluation.indices) == [9, 19, 29, 39, 49, 59]
    assert first.record() == second.record() and first.record()["items"] == 6
    assert HELD_OUT_ITEMS == 1024 and "every 10th of 60 items" in first.record()["source"]
