"""Zoom: Laplacian blending, level consistency, the seam measure, the zoom stack and its rendering."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nextscale.images import psnr, to_pil
from nextscale.sampling.blend import collapse, laplacian_blend, laplacian_pyramid
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig
from nextscale.sampling.zoom import (
    ZoomOptions,
    blend_levels,
    centre,
    default_keep_scales,
    paste_centre,
    seam_gradient_ratio,
    shrink,
    zoom,
)
from nextscale.sampling.zoom_video import render_frame, save_zoom, write_mp4, zoom_frames


def smooth_images(seed: int, count: int = 3, size: int = 64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    coarse = [torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1 for _ in range(count)]
    return [F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
            for image in coarse]


def test_laplacian_pyramid_collapses_exactly_and_blends_by_mask() -> None:
    base, detail = smooth_images(0, 2)
    pyramid = laplacian_pyramid(base, 4)
    assert [band.shape[-1] for band in pyramid] == [64, 32, 16, 8]
    torch.testing.assert_close(collapse(pyramid), base, atol=1e-5, rtol=0)
    zeros, ones = torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    torch.testing.assert_close(laplacian_blend(base, detail, zeros), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(laplacian_blend(base, detail, ones), detail, atol=1e-5, rtol=0)
    # with every band but the finest from the base, only the finest band moves over
    mixed = laplacian_blend(base, detail, ones, keep_coarse=4, levels=5)
    expected = collapse([laplacian_pyramid(detail, 5)[0], *laplacian_pyramid(base, 5)[1:]])
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(mixed, base, atol=1e-2)


@pytest.mark.parametrize("factor", [2, 4])
def test_blended_levels_agree_and_stay_unchanged_away_from_the_centre(factor: int) -> None:
    levels = smooth_images(1)
    blended = blend_levels(levels, factor)
    for parent, child in zip(blended, blended[1:]):
        assert float(psnr(shrink(child, factor), centre(parent, factor)).min()) > 35
    before = [float(psnr(shrink(c, factor), centre(p, factor)).mean()) for p, c in zip(levels, levels[1:])]
    assert max(before) < 30  # independent random levels did not agree before
    border = 64 // 2 - 64 // factor // 2 - 6  # far enough from the centre box for every pyramid band
    torch.testing.assert_close(blended[0][..., :border, :], levels[0][..., :border, :].clamp(-1, 1), atol=1e-4,
                               rtol=0)


def test_seam_gradient_ratio_sees_a_pasted_seam_and_blending_removes_it() -> None:
    parent, child = smooth_images(2, 2)
    flat = torch.zeros(1, 3, 64, 64)
    assert torch.isfinite(seam_gradient_ratio(flat + torch.linspace(-1, 1, 64), 2)).all()
    pasted = paste_centre(parent, child - 0.5, 2)
    naive = float(seam_gradient_ratio(pasted, 2).mean())
    blended = float(seam_gradient_ratio(blend_levels([parent, child - 0.5], 2)[0], 2).mean())
    content = float(seam_gradient_ratio(parent, 2).mean())  # the parent alone, no seam at all
    assert naive > 1.5 * content and blended < 1.1 * content


def test_default_keep_scales_is_what_the_crop_determines() -> None:
    assert default_keep_scales((1, 2, 3, 4, 6, 8), 2) == 4
    assert default_keep_scales((1, 2, 3, 4, 6, 8), 4) == 2
    assert default_keep_scales((1, 2, 4), 4) == 1
    with pytest.raises(ValueError, match="zoom-factor"):
        ZoomOptions(factor=3)


@pytest.mark.parametrize("zoom_out", [False, True])
def test_zoom_stack_levels_are_consistent(tiny_pipeline: Pipeline, zoom_out: bool) -> None:
    prompts = ["a man with glasses", "a woman", "a beard"]
    config = SamplingConfig(cfg_scale=2.0)
    result = zoom(tiny_pipeline, prompts, 0, config, ZoomOptions(factor=2, zoom_out=zoom_out), batch=2)
    assert len(result.levels) == len(result.raw) == 3
    assert all(level.shape == (2, 3, 16, 16) for level in result.levels)
    assert result.prompts == (prompts[::-1] if zoom_out else prompts)
    before, after = result.agreement_psnr(), result.agreement_psnr(blended=True)
    assert all(float(b.mean()) > float(a.mean()) for a, b in zip(before, after))
    assert all(float(b.min()) > 30 for b in after)
    again = zoom(tiny_pipeline, prompts, 0, config, ZoomOptions(factor=2, zoom_out=zoom_out), batch=2)
    assert all(torch.equal(a, b) for a, b in zip(result.levels, again.levels))  # seeded
    with pytest.raises(ValueError, match="at least two prompts"):
        zoom(tiny_pipeline, prompts[:1])


def test_zoom_frames_and_files(tmp_path: Path) -> None:
    levels = smooth_images(3)
    frames = zoom_frames(levels, 2, frames_per_level=4, frame_size=32)
    assert len(frames) == 9 and all(frame.shape == (2, 3, 32, 32) for frame in frames)
    first = F.interpolate(levels[0], size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(frames[0][..., :8, :], first.clamp(-1, 1)[..., :8, :])  # outside the deeper levels
    last = F.interpolate(levels[-1], size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(frames[-1], last.clamp(-1, 1))
    torch.testing.assert_close(render_frame(levels, 2, 1.0, 32), frames[4])
    written = save_zoom(levels, ["wide", "closer", "closest"], 2, tmp_path, frames_per_level=2, frame_size=32)
    names = {path.name for path in written}
    assert {"zoom-0-level0-wide.png", "zoom-1-level2-closest.png", "zoom-0.gif", "zoom-1.gif"} <= names


def test_mp4_only_with_imageio_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pictures = to_pil(torch.zeros(3, 3, 16, 16))
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed
        assert write_mp4(pictures, tmp_path / "none.mp4") is None and not (tmp_path / "none.mp4").exists()
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = write_mp4(pictures, tmp_path / "zoom.mp4")
    assert path is not None
    frames = imageio_ffmpeg.read_frames(str(path))
    assert next(frames)["size"] == (16, 16) and sum(1 for _ in frames) == 3
