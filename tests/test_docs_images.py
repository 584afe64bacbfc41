"""`make docs-images` (tools/docs_images.py): every picture of README.md and docs/ is drawn by the bundled
model, here into a temporary folder: each a valid PNG of its grid's size (64 px images, 2 px padding)
and under 1 MB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def grid_size(columns: int, rows: int, side: int = 64) -> tuple[int, int]:
    return columns * (side + 2) + 2, rows * (side + 2) + 2


EXPECTED = {
    "progression.png": grid_size(6, 4),  # the demo's 6 scales, 4 prompts
    "editing_inpaint.png": grid_size(8, 3),  # sources, the band, the inpaintings
    "editing_outpaint.png": grid_size(8, 2),
    "editing_variations.png": grid_size(8, 4),  # sources, keeping 2, 3, 4 scales
    "per_scale_prompts.png": grid_size(8, 6),  # A, B, switches at 2, 3, 4, 5
    "zoom_levels.png": grid_size(4, 3),  # 4 chains, 1x 2x 4x
    "zoom_frames.png": grid_size(7, 1, side=128),
}


def test_docs_images_are_drawn_by_one_command(tmp_path: Path) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "docs_images.py"), "--out", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(EXPECTED)
    for name, size in EXPECTED.items():
        path = tmp_path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(path) as picture:
            picture.verify()
        with Image.open(path) as picture:
            assert (picture.format, picture.mode, picture.size) == ("PNG", "RGB", size), name
        assert path.stat().st_size < 1_000_000, name
        assert f"wrote {path}" in result.stdout
    # the docs show these very files: every one is in docs/ under the same name
    assert all((ROOT / "docs" / name).is_file() for name in EXPECTED)
