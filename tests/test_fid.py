"""FID and Inception Score: the formulas on known Gaussians, and the folder command with a tiny extractor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from nextscale.eval.fid import FidArgs, frechet_distance, inception_score, main


def test_frechet_distance_of_known_gaussians() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(20000, 3, generator=generator, dtype=torch.float64)
    assert frechet_distance(base, base) == pytest.approx(0.0, abs=1e-9)
    shifted = base + torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert frechet_distance(base, shifted) == pytest.approx(5.0, abs=1e-9)  # same covariance: |mu_a - mu_b|^2
    scaled = base * 2  # covariance ~4 I against ~I: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(base, scaled) == pytest.approx(3.0, rel=0.05)


def test_inception_score_bounds() -> None:
    assert inception_score(torch.zeros(100, 10), splits=5)[0] == pytest.approx(1.0)  # no confidence: 1
    confident = torch.eye(10).repeat(10, 1) * 50  # every class equally often, each image certain
    score, spread = inception_score(confident, splits=5)
    assert score == pytest.approx(10.0, rel=1e-6) and spread == pytest.approx(0.0, abs=1e-6)


def tiny_extractor(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean colour and its square as features; logits that pick the dominant channel."""
    colour = images.float().mean((2, 3)) / 255  # (b, 3)
    return torch.cat([colour, colour.square()], dim=1), colour * 20


def write_folder(folder: Path, colours: list[tuple[int, int, int]]) -> Path:
    folder.mkdir(parents=True)
    for index, colour in enumerate(colours):
        Image.new("RGB", (8, 8), colour).save(folder / f"{index}.png")
    return folder


def test_folders_with_an_injected_extractor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    colours = [(200 + i, 30 + 2 * i, 40 + (i * 7) % 50) for i in range(24)]
    reference = write_folder(tmp_path / "reference", colours)
    same = write_folder(tmp_path / "same", colours)
    other = write_folder(tmp_path / "other", [(40 + (i * 7) % 50, 30 + 2 * i, 200 + i) for i in range(24)])
    close = main(FidArgs(samples=same, reference=reference, batch_size=5, splits=2), tiny_extractor)
    far = main(FidArgs(samples=other, reference=reference, batch_size=5, splits=2, out=tmp_path / "m.json"),
               tiny_extractor)
    assert close["fid"] == pytest.approx(0.0, abs=1e-9) and far["fid"] > 0.5
    assert far["samples"] == 24 and math.isfinite(far["inception_score"]) and (tmp_path / "m.json").is_file()
    assert "FID" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(FidArgs(samples=tmp_path / "missing", reference=reference), tiny_extractor)
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_a_16_bit_png_is_read_at_its_own_brightness(tmp_path):
    """The FD command reads images through the one decoding path: a mid-grey 16-bit PNG stays mid-grey."""
    import numpy as np

    from nextscale.eval.fid import load_images

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = load_images([path])
    assert pixels.shape == (1, 3, 8, 8) and abs(float(pixels.float().mean()) - 128) <= 2
