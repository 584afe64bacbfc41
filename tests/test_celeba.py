"""`python -m nextscale.data.celeba` on a tiny CelebA made here, in CelebA's own formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nextscale.data import DataConfig, build_dataset
from nextscale.data.celeba import ATTRIBUTES, image_caption, main, read_attributes

NAMES = [f"00000{i}.jpg" for i in range(1, 6)]
PRESENT = {  # per image, the attributes set to 1 (the others -1)
    "000001.jpg": {"Male", "Young", "Eyeglasses", "Smiling"},
    "000002.jpg": {"No_Beard", "Young", "Wavy_Hair", "Blond_Hair", "Wearing_Lipstick"},
    "000003.jpg": {"Male"},  # a man with a beard, nothing else
    "000004.jpg": {"No_Beard", "Black_Hair", "Wearing_Hat", "Attractive"},
    "000005.jpg": {"Male", "No_Beard", "Bald", "Wearing_Necktie"},
}


def _attribute_line(name: str) -> str:
    values = ["1" if attribute in PRESENT[name] else "-1" for attribute in ATTRIBUTES]
    return name + " " + "".join(("  " if value == "1" else " ") + value for value in values)


@pytest.fixture
def celeba(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "img_align_celeba"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 255, (22, 18, 3), dtype=np.uint8)).save(images / name)
    attributes = tmp_path / "list_attr_celeba.txt"
    lines = [str(len(NAMES)), " ".join(ATTRIBUTES) + " ", *(_attribute_line(name) for name in NAMES)]
    attributes.write_text("\n".join(lines) + "\n")
    return images, attributes


def _convert(images: Path, attributes: Path, out: Path, *options: str) -> list[dict]:
    main(["--images", str(images), "--attributes", str(attributes), "--out", str(out), *options])
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_writes_a_captioned_folder_that_the_folder_source_reads(celeba, tmp_path, capsys):
    images, attributes = celeba
    records = _convert(images, attributes, tmp_path / "faces")
    assert [record["file_name"] for record in records] == NAMES
    assert all((tmp_path / "faces" / name).is_symlink() for name in NAMES)
    assert "wrote 5 of 5 images (linked)" in capsys.readouterr().out
    captions = {record["file_name"]: record["text"] for record in records}
    assert "woman" in captions["000002.jpg"] or "female" in captions["000002.jpg"]
    assert "attractive" not in " ".join(captions.values())

    dataset = build_dataset(DataConfig(source="folder", path=str(tmp_path / "faces"), image_size=32))
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["caption"] for item in items] == [captions[name] for name in NAMES]
    assert items[0]["image"].shape == (3, 32, 32)


def test_captions_are_deterministic_for_a_seed(celeba, tmp_path):
    images, attributes = celeba
    first = _convert(images, attributes, tmp_path / "a", "--seed", "3")
    again = _convert(images, attributes, tmp_path / "b", "--seed", "3")
    other = _convert(images, attributes, tmp_path / "c", "--seed", "4")
    assert first == again
    assert first != other


def test_a_bearded_man_can_be_a_male_face_with_a_beard(celeba):
    _, attributes = celeba
    rows = read_attributes(attributes)
    index = [name for name, _ in rows].index("000003.jpg")
    produced = {image_caption(rows[index][1], seed, index) for seed in range(51)}
    assert "a male face with a beard" in produced
    assert produced <= {"a male face with a beard", "a man with a beard", "an older man with a beard",
                        "a photo of a man with a beard", "a photo of an older man with a beard",
                        "a close-up portrait of a man with a beard",
                        "a close-up portrait of an older man with a beard"}


def test_copy_and_resize_and_absent_images_are_skipped(celeba, tmp_path, capsys):
    images, attributes = celeba
    (images / "000004.jpg").unlink()
    records = _convert(images, attributes, tmp_path / "faces", "--copy", "--size", "16")
    assert [record["file_name"] for record in records] == [n for n in NAMES if n != "000004.jpg"]
    with Image.open(tmp_path / "faces" / "000001.jpg") as image:
        assert image.size == (16, 16)
    assert not (tmp_path / "faces" / "000001.jpg").is_symlink()
    captured = capsys.readouterr()
    assert "warning: skipped 1 image(s)" in captured.err and "000004.jpg" in captured.err
    assert "wrote 4 of 5 images (resized to 16)" in captured.out


def test_a_malformed_line_is_one_error_line(celeba, tmp_path):
    images, attributes = celeba
    lines = attributes.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " 2"
    attributes.write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "nextscale.data.celeba", "--images", str(images),
                             "--attributes", str(attributes), "--out", str(tmp_path / "faces")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and ":5: expected a file name and 40 values" in result.stderr
