"""Editing: inpaint, outpaint, variations, the kept-pixel blend, bad inputs and the CLI options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.images import to_uint8
from nextscale.sampling.blend import blend_kept
from nextscale.sampling.cli import SampleArgs, main
from nextscale.sampling.edit_cli import EditArgs, ZoomArgs
from nextscale.sampling.editing import (
    EditOptions,
    InputError,
    check_sides,
    edit,
    inpaint,
    load_image,
    load_mask,
    outpaint,
    outpaint_canvas,
    variations,
)
from nextscale.sampling.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a man with glasses", "a woman with a beard"]


def portrait_like(seed: int = 0, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=generator) * 2 - 1


def eye_band(size: int = 16) -> torch.Tensor:
    known = torch.ones(1, size, size, dtype=torch.bool)
    known[:, size // 4 : size // 2, :] = False
    return known


def test_inpaint_keeps_the_known_pixels_and_tokens(tiny_pipeline: Pipeline) -> None:
    image, known = portrait_like(), eye_band()
    result = inpaint(tiny_pipeline, image, known, PROMPTS, [0, 1])
    assert result.images.shape == (2, 3, 16, 16)
    kept = known.expand(2, -1, -1).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(result.images[kept], image.expand(2, -1, -1, -1)[kept])  # the blend puts them back
    assert not torch.equal(result.unblended[kept], result.images[kept])  # the decode alone does not
    assert all(mask.shape == code.shape for code, mask in zip(result.codes, result.constraints.masks))
    # the hole's finest tokens are free, the rows away from it are kept (whole-cell rule at the finest scale)
    finest = result.constraints.masks[-1]
    assert not finest[:, 1].any() and finest[:, 3].all()
    unblended = inpaint(tiny_pipeline, image, known, PROMPTS, [0, 1], options=EditOptions(blend=False))
    torch.testing.assert_close(unblended.images, result.unblended)


def test_blend_feathers_only_into_the_regenerated_region() -> None:
    original, generated = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    known = torch.zeros(1, 8, 8, dtype=torch.bool)
    known[:, :, :4] = True
    blended = blend_kept(generated, original, known, feather=1.0)
    assert torch.equal(blended[..., :4], original[..., :4])
    assert 0 < float(blended[0, 0, 0, 4]) < 1 and float(blended[0, 0, 0, 7]) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(blend_kept(generated, original, known, feather=0)[..., 4:], generated[..., 4:])


def test_outpaint_canvas_geometry_and_errors() -> None:
    image = portrait_like()
    canvas, known = outpaint_canvas(image, (4, 4, 4, 4))
    assert known[0, 4:12, 4:12].all() and known.sum() == 64
    assert torch.allclose(canvas[..., 4:12, 4:12], torch.nn.functional.interpolate(image, size=(8, 8), mode="area"))
    _, right = outpaint_canvas(image, (0, 0, 8, 0))  # extend to the right: the image fits the 16 x 8 box
    assert right[0, 4:12, 0:8].all() and right.sum() == 64
    for sides, message in [((0, 0, 0, 0), "adds nothing"), ((8, 0, 8, 0), "no room"), ((-1, 0, 0, 0), ">= 0"),
                           ((1, 2, 3), "4 numbers")]:
        with pytest.raises(InputError, match=message):
            check_sides(sides, 16)


def test_outpaint_and_variations_keep_what_they_should(tiny_pipeline: Pipeline) -> None:
    image = portrait_like(1)
    result = outpaint(tiny_pipeline, image, (4, 4, 4, 4), PROMPTS, [0, 1])
    canvas, known = outpaint_canvas(image, (4, 4, 4, 4))
    assert torch.equal(result.images[..., 4:12, 4:12], canvas.expand(2, -1, -1, -1)[..., 4:12, 4:12])
    varied = variations(tiny_pipeline, image, 2, PROMPTS, [0, 1])
    codes = tiny_pipeline.tokenizer.encode(image)
    assert torch.equal(varied.codes[0], codes[0].expand(2, -1, -1))
    assert torch.equal(varied.codes[1], codes[1].expand(2, -1, -1))
    with pytest.raises(InputError, match="nothing is kept"):
        edit(tiny_pipeline, image, PROMPTS)


def save_png(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    picture = Image.fromarray(array)
    (picture.convert(mode) if mode else picture).save(path)
    return path


def test_inputs_are_converted_with_a_message_and_bad_ones_refused(tmp_path: Path) -> None:
    pixels = np.zeros((40, 30, 3), np.uint8)
    pixels[:, :, 0] = 200
    image, original_size, messages = load_image(save_png(pixels, tmp_path / "in.png", "RGBA"), 16)
    assert image.shape == (1, 3, 16, 16) and original_size == (30, 40)
    assert messages == ["converted RGBA to RGB", "centre-cropped 30x40 to 30x30", "resized 30x30 to the model's 16x16"]
    assert torch.equal(to_uint8(image)[0, 0], torch.full((16, 16), 200, dtype=torch.uint8))
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20] = 255
    known = load_mask(save_png(mask, tmp_path / "mask.png"), 16, original_size)
    assert known.shape == (1, 16, 16) and known.any() and not known.all()
    (tmp_path / "text.png").write_text("not an image")
    cases = [
        (lambda: load_image(tmp_path / "missing.png", 16), "does not exist"),
        (lambda: load_image(tmp_path / "text.png", 16), "not a readable image"),
        (lambda: load_mask(save_png(mask[:20], tmp_path / "small.png"), 16, original_size), "mask is 30x20 but"),
        (lambda: load_mask(save_png(mask * 0, tmp_path / "black.png"), 16, original_size), "all black"),
        (lambda: load_mask(save_png(mask * 0 + 255, tmp_path / "white.png"), 16, original_size), "all white"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def cli_args(tmp_path: Path, pipeline_dir: Path, **editing: object) -> SampleArgs:
    return SampleArgs(prompt=("a man with glasses",), num_images=2, checkpoint=str(pipeline_dir), out=tmp_path / "out",
                      progress=False, editing=EditArgs(**editing))  # type: ignore[arg-type]


def test_cli_edits(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    pixels = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    image = save_png(pixels, tmp_path / "in.png")
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10] = 255
    mask_path = save_png(mask, tmp_path / "mask.png")
    written = main(cli_args(tmp_path, tiny_pipeline_dir, image=image, mask=mask_path))
    names = {path.name for path in written}
    assert {"input.png", "grid.png", "0000-a-man-with-glasses.png", "0001-a-man-with-glasses.png"} == names
    for options in (dict(outpaint=(4, 0, 4, 0)), dict(keep_scales=2), dict(detail_prompt="a beard", switch_scale=1),
                    dict(scale_prompt=("a", "b", "c"))):
        written = main(cli_args(tmp_path / str(len(options)), tiny_pipeline_dir, image=image, **options)
                       if "scale_prompt" not in options and "detail_prompt" not in options
                       else cli_args(tmp_path / "mix", tiny_pipeline_dir, **options))
        assert any(path.name == "0001-a-man-with-glasses.png" for path in written)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(mask="m.png"), "--mask needs --image"),
        (dict(image="in.png"), "--image needs --mask"),
        (dict(image="in.png", mask="m.png", outpaint=(1, 1, 1, 1)), "give one of them"),
        (dict(image="in.png", keep_scales=9), "--keep-scales must be in"),
        (dict(keep_scales=1), "--keep-scales needs --image"),
        (dict(switch_scale=1), "--switch-scale needs --detail-prompt"),
        (dict(detail_prompt="b", switch_scale=3), "--switch-scale must be in"),
        (dict(scale_prompt=("a", "b")), "given 2 times but this model has 3 scales"),
        (dict(image="missing.png", keep_scales=1), "does not exist"),
        (dict(image="in.png", outpaint=(8, 0, 8, 0)), "no room"),
    ],
)
def test_cli_edit_errors_are_one_line_with_exit_code_2(
    tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: dict, message: str
) -> None:
    save_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "in.png")
    save_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "m.png")
    resolved = {key: tmp_path / value if key in ("image", "mask") else value for key, value in options.items()}
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tmp_path, tiny_pipeline_dir, **resolved))
    assert exit_info.value.code == 2
    error = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Loading weights")]
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0]


def test_cli_refuses_progressions_of_edits(tiny_pipeline_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = SampleArgs(prompt=("a", "b"), checkpoint=str(tiny_pipeline_dir), out=tmp_path, save_progression=True,
                      zooming=ZoomArgs(zoom=True))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "--save-progression is for plain" in capsys.readouterr().err


def test_cli_zoom_errors(tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for zoom_args, prompts, message in [(ZoomArgs(zoom=True), ("a",), "at least two prompts"),
                                        (ZoomArgs(zoom=True, zoom_factor=3), ("a", "b"), "--zoom-factor must be")]:
        with pytest.raises(SystemExit) as exit_info:
            main(SampleArgs(prompt=prompts, checkpoint=str(tiny_pipeline_dir), out=tmp_path, progress=False,
                            zooming=zoom_args))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def run_sample(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "sample.py", "--no-progress", "--cfg", "2", *arguments]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sample_script_edits_and_zooms_with_the_bundled_model(tmp_path: Path) -> None:
    pixels = np.full((64, 64, 3), 90, np.uint8)
    save_png(pixels, tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:34, 16:48] = 255
    save_png(mask, tmp_path / "mask.png")
    done = run_sample("--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--prompt",
                      "a man with glasses", "--out", str(tmp_path / "inpaint"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = np.asarray(Image.open(tmp_path / "inpaint" / "0000-a-man-with-glasses.png"))
    assert (result[40:] == 90).all()  # kept pixels blended back exactly
    done = run_sample("--zoom", "--prompt", "a man with glasses on a blue background", "--prompt",
                      "a close-up of a man with glasses", "--zoom-frames", "3", "--out", str(tmp_path / "zoom"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "zoom").glob("zoom-level*.png"))) == 2 and (tmp_path / "zoom" / "zoom.gif").is_file()
    done = run_sample("--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "missing.png"), "--prompt", "a",
                      "--out", str(tmp_path / "bad"))  # checked before the model loads
    assert done.returncode == 2
    missing = tmp_path / "missing.png"
    assert done.stderr.strip().splitlines() == [f"error: --mask {missing} does not exist or is not a file"]
