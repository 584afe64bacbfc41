"""docs/own-images.md's Python example (encode and decode images with a trained tokenizer) runs as printed,
against the bundled tokenizer."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- run by tests/test_own_images_doc.py against checkpoints/demo/tokenizer -->"


def test_the_encode_decode_example_runs_on_the_bundled_tokenizer(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "own-images.md").read_text()
    assert page.count(MARKER) == 1
    snippet = re.match(r"\s*```python\n(.*?)\n```", page.split(MARKER, 1)[1], re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)  # not square, any size
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "docs/own-images.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0] == "[(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)]"  # what the page's comment says
    assert re.fullmatch(r"130 tokens, PSNR \d+\.\d dB \(first 3 scales: \d+\.\d dB\)", lines[1]), lines
    for name in ("reconstruction.png", "first_3_scales.png"):
        assert Image.open(tmp_path / name).size == (64, 64)
