"""The web UI without a browser: upload validation, the reproducing command line, streaming, the model
registry and the generation behind the Generate tab."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from conftest import tiny_tokenizer_config, tiny_transformer
from hostile_files import bomb_png, text_as_png, truncated_png
from PIL import Image, ImageFile

from nextscale.images import to_arrays
from nextscale.sampling import SamplingConfig, generate
from nextscale.sampling.cli import SampleArgs, main
from nextscale.sampling.pipeline import write_pipeline
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.ui.commands import SampleCommand, format_number, split_prompts
from nextscale.ui.config import UIConfig, UploadLimits
from nextscale.ui.controls import number, sampling_config, whole
from nextscale.ui.edits import EditRequest, editor_picture, mask_layer, painted_mask, run_edit
from nextscale.ui.generation import GenerateRequest, ScaleFrames, run_generate
from nextscale.ui.main import check_checkpoint
from nextscale.ui.mix import MixRequest, run_mix
from nextscale.ui.models import ModelError, ModelRegistry, checkpoint_key
from nextscale.ui.outputs import OutputStore
from nextscale.ui.streaming import Finished, stream
from nextscale.ui.uploads import UploadError, validate_upload
from nextscale.ui.zoom import ZoomRequest, run_zoom

LIMITS = UploadLimits(max_bytes=200_000, max_pixels=1_000_000)


# -- uploads -----------------------------------------------------------------------------------------


def test_a_real_image_is_accepted_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "picture.webp"
    Image.new("RGBA", (40, 30), (10, 20, 30, 128)).save(path)
    image = validate_upload(path, LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: bomb_png(tmp / "bomb.png"), "decompression bomb"),
        (lambda tmp: text_as_png(tmp / "script.png"), "is not an image"),
        (lambda tmp: truncated_png(tmp / "cut.png"), "could not be decoded"),
        (lambda tmp: empty_file(tmp / "empty.png"), "is empty"),
    ],
)
def test_hostile_uploads_get_a_message(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(UploadError, match=message):
        validate_upload(path, LIMITS)


def test_bomb_is_refused_from_its_header_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels of a refused upload were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = bomb_png(tmp_path / "bomb.png", 5_000, 4_000)  # under Pillow's own limit, over ours
    with pytest.raises(UploadError, match=r"5000 x 4000 pixels \(20 megapixels\), more than the 1 megapixel"):
        validate_upload(path, LIMITS)
    path = bomb_png(tmp_path / "huge.png", 40_000, 40_000)  # over Pillow's limit too
    assert path.stat().st_size < 100_000  # 4.8 GB of pixels in a small file
    with pytest.raises(UploadError, match="refused as a decompression bomb"):
        validate_upload(path, LIMITS)


def test_size_and_format_limits(tmp_path: Path) -> None:
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big)
    with pytest.raises(UploadError, match=r"more than the 0.2 MiB limit"):
        validate_upload(big, LIMITS)
    tiff = tmp_path / "picture.tiff"
    Image.new("RGB", (8, 8)).save(tiff)
    with pytest.raises(UploadError, match="is a TIFF image; accepted formats: PNG, JPEG"):
        validate_upload(tiff, LIMITS)
    with pytest.raises(UploadError, match="not a regular file"):
        validate_upload(tmp_path, LIMITS)
    with pytest.raises(UploadError, match="no file"):
        validate_upload(None, LIMITS)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        UIConfig(concurrency=0)
    with pytest.raises(ValueError, match="upload limits"):
        UploadLimits(max_bytes=0)
    assert UIConfig().host == "127.0.0.1" and not UIConfig().share


# -- the command line --------------------------------------------------------------------------------


def test_numbers_and_prompts() -> None:
    assert [format_number(value) for value in (4.0, 0.95, 1.0, 0.1)] == ["4", "0.95", "1", "0.1"]
    assert split_prompts("  a cat \n\n a dog\n") == ["a cat", "a dog"]


def test_command_quotes_prompts_and_counts_seeds() -> None:
    command = SampleCommand(("it's a \"man\"", "b"), 2, 10, SamplingConfig(top_k=None), None)
    assert shlex.split(command.line())[:3] == ["nextscale-sample", "--prompt", "it's a \"man\""]
    assert command.image_seeds() == [10, 11, 12, 13]
    assert command.image_prompts() == ["it's a \"man\"", "it's a \"man\"", "b", "b"]
    single = command.single_image(2)
    assert (single.prompts, single.num_images, single.seed) == (("b",), 1, 12)
    assert "--top-k 0" in command.line() and "--checkpoint" not in command.line()


def cli_images(command: SampleCommand, out: Path) -> list[np.ndarray]:
    """Run the command line through the CLI's own parser and entry point; its PNGs in order."""
    args = tyro.cli(SampleArgs, args=[*shlex.split(command.line())[1:], "--out", str(out), "--no-progress"])
    paths = [path for path in main(args) if path.name != "grid.png"]
    return [np.asarray(Image.open(path)) for path in paths]


def test_the_shown_command_line_redraws_the_same_images(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry("cpu", "float32", 1, 1)
    model = registry.get(str(tiny_pipeline_dir))
    request = GenerateRequest(("a man with a beard", "a woman with red hair"), 2, 7,
                              SamplingConfig(cfg_scale=3.0, top_k=20, top_p=0.9, temperature=0.8))
    result = run_generate(model, request, tmp_path / "ui", lambda frames: None)
    shown = [np.asarray(image) for image in result.images]
    assert len(shown) == 4
    for ours, theirs in zip(shown, cli_images(result.command, tmp_path / "all")):
        np.testing.assert_array_equal(ours, theirs)
    alone = cli_images(result.command.single_image(3), tmp_path / "one")
    np.testing.assert_array_equal(shown[3], alone[0])


# -- streaming ---------------------------------------------------------------------------------------


def test_stream_yields_reports_in_order_then_the_result() -> None:
    def work(report) -> str:
        for value in range(5):
            report(value)
        return "done"

    assert list(stream(work)) == [0, 1, 2, 3, 4, Finished("done")]


def test_stream_raises_the_work_error_after_its_reports() -> None:
    def work(report) -> None:
        report("first")
        raise RuntimeError("broken")

    items = stream(work)
    assert next(items) == "first"
    with pytest.raises(RuntimeError, match="broken"):
        next(items)


# -- generation --------------------------------------------------------------------------------------


def test_run_generate_reports_every_scale_coarse_to_fine(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(tiny_pipeline_dir))
    request = GenerateRequest(("a portrait with glasses",), 4, 0, SamplingConfig())
    reports: list[ScaleFrames] = []
    result = run_generate(model, request, tmp_path, reports.append)
    assert [frames.scale for frames in reports] == [0, 1, 2]
    assert [frames.size for frames in reports] == [1, 2, 4]
    size = model.image_size
    cell = to_arrays(torch.zeros(1, 3, size, size)).shape[1]
    assert reports[0].grid.size == (2 * cell + 6, 2 * cell + 6)  # four images in a padded 2 x 2 grid
    reference = generate(model.pipeline, ["a portrait with glasses"] * 4, [0, 1, 2, 3], SamplingConfig())
    for image, expected in zip(result.images, to_arrays(reference.images)):
        np.testing.assert_array_equal(np.asarray(image), expected)
    for gif in result.progression_gifs:
        with Image.open(gif) as animation:
            assert animation.n_frames == 3


def test_request_checks() -> None:
    config = SamplingConfig()
    with pytest.raises(ValueError, match="write a prompt"):
        GenerateRequest((), 1, 0, config).check(16)
    with pytest.raises(ValueError, match="3 prompts x 6 images = 18 images; this server allows at most 16"):
        GenerateRequest(("a", "b", "c"), 6, 0, config).check(16)
    with pytest.raises(ValueError, match="the seed must be"):
        GenerateRequest(("a",), 1, -1, config).check(16)


# -- models and outputs ------------------------------------------------------------------------------


def test_registry_names_caches_and_evicts(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    assert checkpoint_key(None) is None and checkpoint_key(" demo ") is None and checkpoint_key("") is None
    registry = ModelRegistry("cpu", "float32", 1, 1)
    tiny = registry.get(str(tiny_pipeline_dir))
    assert registry.get(str(tiny_pipeline_dir) + "/") is tiny
    info = tiny.info()
    assert info["scales"] == "1x1 2x2 4x4" and str(info["conditioning"]).startswith("text: ")
    with pytest.raises(ModelError, match="has no pipeline.json"):
        registry.get(str(tmp_path))
    with pytest.raises(ModelError, match="cannot load"):
        registry.get(str(tmp_path / "missing"))
    assert registry.loaded() == [str(tiny_pipeline_dir.resolve())]


def test_one_sampling_at_a_time_per_model(tiny_pipeline_dir: Path) -> None:
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(tiny_pipeline_dir))
    running, most = [0], [0]
    lock = threading.Lock()

    def hold() -> None:
        with model.slot():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_output_store_keeps_the_latest_folders(tmp_path: Path) -> None:
    store = OutputStore(keep=2, root=tmp_path / "out")
    folders = [store.new_folder() for _ in range(4)]
    assert [folder.exists() for folder in folders] == [False, False, True, True]
    store.close()
    assert not (tmp_path / "out").exists()


# -- editing -----------------------------------------------------------------------------------------


def test_painted_layers_and_uploaded_masks() -> None:
    assert painted_mask(None) is None
    assert painted_mask([Image.new("RGBA", (8, 8), (0, 0, 0, 0))]) is None
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 0, 255, 40))
    mask = np.asarray(painted_mask([layer]))
    assert mask[3, 2] == 255 and mask.sum() == 255
    uploaded = Image.new("L", (4, 4), 0)
    uploaded.putpixel((0, 0), 255)
    painted = np.asarray(mask_layer(uploaded, (8, 8)))
    assert painted[:2, :2, 3].all() and painted[..., 3].sum() == 4 * 255
    assert editor_picture(Image.new("RGB", (64, 32)), 512).size == (512, 256)


def test_edits_on_the_tiny_pipeline(tiny_pipeline_dir: Path) -> None:
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(tiny_pipeline_dir))
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 0, 24, 12))
    request = EditRequest("inpaint", "a man with glasses", 0, SamplingConfig())
    outcome = run_edit(model, request, source, mask)
    assert outcome.before.size == outcome.after.size == (16, 16)
    assert any("centre-cropped 32x24 to 24x24" in note for note in outcome.notes)
    kept = np.asarray(outcome.regenerated) < 128
    np.testing.assert_array_equal(np.asarray(outcome.after)[kept], np.asarray(outcome.before)[kept])
    with pytest.raises(ValueError, match="paint the region to regenerate"):
        run_edit(model, request, source, None)
    outpainted = run_edit(model, EditRequest("outpaint", "a man", 0, SamplingConfig(), sides=(4, 0, 4, 0)), source,
                          None)
    assert (np.asarray(outpainted.regenerated)[:, :4] == 255).all()
    varied = run_edit(model, EditRequest("keep scales", "a man", 0, SamplingConfig(), keep_scales=2), source, None)
    assert varied.after.size == (16, 16)
    with pytest.raises(ValueError, match="more than the model's 3 scales"):
        run_edit(model, EditRequest("keep scales", "a man", 0, SamplingConfig(), keep_scales=5), source, None)
    with pytest.raises(ValueError, match="write a prompt"):
        EditRequest("inpaint", " ", 0, SamplingConfig()).check()


# -- mix and zoom ------------------------------------------------------------------------------------


def test_mix_rows_equal_each_prompt_alone_and_the_command_redraws_the_mix(tiny_pipeline_dir: Path,
                                                                          tmp_path: Path) -> None:
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(tiny_pipeline_dir))
    config = SamplingConfig(cfg_scale=2.0)
    request = MixRequest("a woman with red hair", "a man with glasses", 1, 2, 4, config)
    reports: list[ScaleFrames] = []
    result = run_mix(model, request, reports.append)
    assert [frames.scale for frames in reports] == [0, 1, 2]
    alone = generate(model.pipeline, ["a woman with red hair"] * 2, [4, 5], config)
    for image, expected in zip(result.layout_only, to_arrays(alone.images)):
        np.testing.assert_array_equal(np.asarray(image), expected)
    assert "--detail-prompt 'a man with glasses' --switch-scale 1" in result.command.line()
    for ours, theirs in zip(result.mixed, cli_images(result.command, tmp_path / "cli")):
        np.testing.assert_array_equal(np.asarray(ours), theirs)
    with pytest.raises(ValueError, match=r"switch scale must be in \[1, 2\]"):
        MixRequest("a", "b", 3, 1, 0, config).check(3, 16)


def test_zoom_writes_levels_gif_and_video_as_the_command_line_does(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(tiny_pipeline_dir))
    request = ZoomRequest(("a portrait of a man", "a man with glasses", "glasses"), 2, False, 3, SamplingConfig())
    outcome = run_zoom(model, request, tmp_path / "ui")
    assert len(outcome.levels) == 3 and len(outcome.agreement_db) == 2
    with Image.open(outcome.gif) as animation:
        assert animation.n_frames == 2 * 12 + 1
    assert outcome.video is not None and outcome.video.stat().st_size > 0
    line = outcome.command.line()
    assert line.startswith("nextscale-sample --zoom --prompt 'a portrait of a man'") and "--zoom-factor 2" in line
    rendering = ["--zoom-frames", "1", "--zoom-frame-size", "16"]  # the levels do not depend on the video
    args = tyro.cli(SampleArgs, args=[*shlex.split(line)[1:], *rendering, "--out", str(tmp_path / "cli"),
                                      "--no-progress"])
    written = sorted(path for path in main(args) if "-level" in path.name)
    assert len(written) == 3
    for ours, path in zip(outcome.levels, written):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(path)))
    with pytest.raises(ValueError, match="a zoom needs 2 to 6 prompts"):
        ZoomRequest(("one",), 2, False, 0, SamplingConfig()).check()


def test_quick_checkpoint_checks_before_anything_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for fine in (None, "", "demo", "someone/pipeline"):
        check_checkpoint(fine)
    for path, message in ((tmp_path, "has no pipeline.json"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            check_checkpoint(str(path))
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.startswith("error: ") and message in error
        assert error.count("\n") == 1  # one line


def test_the_work_imports_without_gradio_and_the_app_says_how_to_get_it() -> None:
    script = (
        "import sys; sys.modules['gradio'] = None\n"
        "import nextscale.ui.generation, nextscale.ui.edits, nextscale.ui.mix, nextscale.ui.zoom, nextscale.ui.main\n"
        "import nextscale.ui.app\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the web UI needs gradio: pip install 'nextscale[ui]'"), result.stderr


def test_control_values_are_checked_with_their_names() -> None:
    assert whole(4.0, "seed") == 4 and number("0.5", "top-p") == 0.5
    with pytest.raises(ValueError, match="seed is empty"):
        whole(None, "seed")
    with pytest.raises(ValueError, match="seed must be a whole number"):
        whole(1.5, "seed")
    with pytest.raises(ValueError, match="cfg must be a number, got 'a lot'"):
        sampling_config("a lot", "linear", 0, 900, 0.95, 1.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling_config(4, "linear", 0, None, 1.5, 1.0)
    assert sampling_config(4, "linear", 0, None, 0.9, 1.0).top_k == 0


def test_a_class_conditional_pipeline_takes_class_numbers(tmp_path: Path) -> None:
    tokenizer_config = tiny_tokenizer_config()
    torch.manual_seed(0)
    transformer = tiny_transformer(tokenizer_config, num_classes=5, cross_attention=False)
    directory = write_pipeline(tmp_path / "classes", MultiScaleVQVAE(tokenizer_config).eval(), transformer, None, None)
    model = ModelRegistry("cpu", "float32", 1, 1).get(str(directory))
    assert model.info()["conditioning"] == "class labels 0 to 4"
    request = GenerateRequest(("3", "1"), 1, 2, SamplingConfig(cfg_scale=1.5))
    result = run_generate(model, request, tmp_path / "ui", lambda frames: None)
    assert result.captions == ["seed 2: class 3", "seed 3: class 1"]
    assert "--class-label 3 --class-label 1" in result.command.line()
    for ours, theirs in zip(result.images, cli_images(result.command, tmp_path / "cli")):
        np.testing.assert_array_equal(np.asarray(ours), theirs)
    with pytest.raises(ValueError, match=r"class-conditional: write one class number \(0 to 4\) per line"):
        run_generate(model, GenerateRequest(("a cat",), 1, 0, SamplingConfig()), tmp_path / "ui", print)
    with pytest.raises(ValueError, match="the Mix tab needs a text-conditioned pipeline"):
        model.require_text("Mix")


def test_the_sampling_controls_start_from_the_models_recommended_settings(tiny_pipeline_dir: Path,
                                                                          tmp_path: Path) -> None:
    """The page's first values are what `sample.py` uses when its options are left out."""
    import shutil

    from nextscale.sampling.pipeline import recommended_sampling, record_sampling
    from nextscale.ui.services import Services

    plain = Services(UIConfig(checkpoint=str(tiny_pipeline_dir)), ModelRegistry("cpu", "float32", 1, 1))
    assert plain.sampling_defaults == SamplingConfig()
    recorded = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline_dir, recorded)
    record_sampling(recorded, 2.0, None, 1.0, "an evaluation")
    services = Services(UIConfig(checkpoint=str(recorded)), ModelRegistry("cpu", "float32", 1, 1))
    assert services.sampling_defaults == SampleArgs().sampling_config({"cfg_scale": 2.0, "top_k": None, "top_p": 1.0})
    assert (services.sampling_defaults.cfg_scale, services.sampling_defaults.top_k) == (2.0, None)
    demo = Services(UIConfig(), ModelRegistry("cpu", "float32", 1, 1)).sampling_defaults
    assert demo == SampleArgs().sampling_config(recommended_sampling(None))  # the bundled demo's pipeline.json
