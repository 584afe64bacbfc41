"""The Python front door (`nextscale.load_pipeline`): PIL images in and out, the same pictures as the
tensor-level functions for the same seeds, `sample.py`'s seeding, the recommended settings as defaults,
and one clear ValueError for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_tokenizer_config, tiny_transformer
from PIL import Image

import nextscale
from nextscale import Generation, ImagePipeline, Zoom
from nextscale.images import to_arrays
from nextscale.sampling import editing
from nextscale.sampling.mixing import generate_mixed
from nextscale.sampling.pipeline import Pipeline, load_pipeline, record_sampling, write_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate
from nextscale.sampling.zoom import zoom
from nextscale.tokenizer import MultiScaleVQVAE

SIZE = 16  # the tiny pipeline's side


@pytest.fixture(scope="module")
def pipe(tiny_pipeline: Pipeline) -> ImagePipeline:
    return ImagePipeline(tiny_pipeline)


def arrays(pictures: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(picture) for picture in pictures])


def band_mask(size: int = SIZE) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : size // 2, :] = 255  # white = regenerate
    return Image.fromarray(mask, mode="L")


def test_importing_nextscale_loads_no_model_code(tmp_path: Path) -> None:
    code = ("import sys, nextscale\nprint('torch' in sys.modules, 'load_pipeline' in dir(nextscale))\n"
            "from nextscale import load_pipeline\nprint(load_pipeline.__module__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "nextscale.sampling.api"]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        nextscale.nothing_here  # noqa: B018


def test_a_call_returns_pil_images_equal_to_generate(pipe: ImagePipeline, tiny_pipeline: Pipeline) -> None:
    images = pipe(["a man", "a woman"], num_images=2, seed=5)
    assert isinstance(images, list) and len(images) == 4
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (SIZE, SIZE)
               for image in images)
    # sample.py's order and seeds: each prompt num_images times, image i from seed + i
    expected = generate(tiny_pipeline, ["a man", "a man", "a woman", "a woman"], 5, pipe.sampling_config())
    np.testing.assert_array_equal(arrays(images), to_arrays(expected.images))


def test_seeds_are_per_image_whatever_the_batch(pipe: ImagePipeline) -> None:
    """The codes of an image depend on its seed alone; its pixels up to the decoder's rounding in another batch."""

    def codes(**kwargs: object) -> list[torch.Tensor]:
        result = pipe("a man with a beard", return_codes=True, **kwargs)
        assert isinstance(result, Generation)
        return result.codes

    together = codes(num_images=3, seed=5)
    for ours, theirs in zip(codes(num_images=3, seed=5, batch_size=2), together):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(codes(seed=[7]), together):
        assert torch.equal(ours[0], theirs[2])
    np.testing.assert_allclose(arrays(pipe("a man with a beard", seed=7)).astype(int),
                               arrays(pipe("a man with a beard", num_images=3, seed=5))[2:].astype(int), atol=1)
    result = pipe("a man with a beard", num_images=2, seed=[9, 3], return_codes=True)
    assert isinstance(result, Generation) and result.seeds == [9, 3] and result.progression is None


def test_codes_and_progression_on_request(pipe: ImagePipeline, tiny_pipeline: Pipeline) -> None:
    result = pipe(["a man", "a woman"], seed=1, return_progression=True, batch_size=1)
    assert isinstance(result, Generation)
    assert result.prompts == ["a man", "a woman"] and result.seeds == [1, 2]
    expected = generate(tiny_pipeline, ["a man", "a woman"], 1, pipe.sampling_config())
    assert [tuple(codes.shape) for codes in result.codes] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    for ours, theirs in zip(result.codes, expected.codes):
        assert torch.equal(ours, theirs)
    assert result.progression is not None and len(result.progression) == 2
    assert all(len(frames) == 3 and isinstance(frames[0], Image.Image) for frames in result.progression)
    np.testing.assert_array_equal(arrays([frames[-1] for frames in result.progression]), arrays(result.images))
    first = np.asarray(result.progression[0][0])
    assert (first == first[0, 0]).all()  # scale 0: one mean colour


def test_defaults_are_the_pipelines_recommended_settings(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(tiny_pipeline_dir, tmp_path / "recommended")
    assert nextscale.load_pipeline(directory).sampling_config() == SamplingConfig()  # none recorded: VAR's demo's
    record_sampling(directory, 2.0, None, 1.0, "a test")
    pipe = nextscale.load_pipeline(directory, device="cpu", dtype=torch.float32)
    assert pipe.recommended is not None and pipe.recommended["source"] == "a test"
    assert pipe.sampling_config() == SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    chosen = pipe.sampling_config(cfg_scale=0, top_k=5, top_p=0.5, temperature=0.5, guidance_off_last=1,
                                  guidance_schedule="constant")
    assert chosen == SamplingConfig(cfg_scale=0.0, top_k=5, top_p=0.5, temperature=0.5, guidance_off_last=1,
                                    guidance_schedule="constant")
    images = pipe("a man", num_images=2, seed=4, cfg_scale=1.5)
    expected = generate(load_pipeline(directory), ["a man"] * 2, 4, SamplingConfig(cfg_scale=1.5, top_k=None,
                                                                                  top_p=1.0))
    np.testing.assert_array_equal(arrays(images), to_arrays(expected.images))


def test_inpaint_round_trip_equals_the_tensor_function(pipe: ImagePipeline, tiny_pipeline: Pipeline) -> None:
    source = pipe("a man", seed=0)[0]
    edits = pipe.inpaint(source, band_mask(), "a man with glasses", num_images=2, seed=3)
    assert len(edits) == 2 and all(edit.size == (SIZE, SIZE) for edit in edits)
    image, _ = editing.image_to_tensor(source, SIZE)
    known = editing.mask_to_known(band_mask(), SIZE)
    expected = editing.inpaint(tiny_pipeline, image, known, ["a man with glasses"] * 2, 3, pipe.sampling_config())
    np.testing.assert_array_equal(arrays(edits), to_arrays(expected.images))
    kept = np.asarray(band_mask()) == 0
    kept[SIZE // 4 - 2 : SIZE // 2 + 2] = False  # the feathered edge
    np.testing.assert_array_equal(np.asarray(edits[0])[kept], np.asarray(source)[kept])


def test_edits_take_files_lists_and_any_size(pipe: ImagePipeline, tiny_pipeline: Pipeline, tmp_path: Path) -> None:
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    from_file = pipe.outpaint(tmp_path / "wide.png", (4, 4, 4, 4), "a man on a red background", seed=2)
    image, _ = editing.image_to_tensor(wide, SIZE)
    expected = editing.outpaint(tiny_pipeline, image, (4, 4, 4, 4), ["a man on a red background"], 2,
                                pipe.sampling_config())
    np.testing.assert_array_equal(arrays(from_file), to_arrays(expected.images))
    sources = pipe(["a man", "a woman"], seed=0)
    varied = pipe.variations(sources, 2, ["a man with glasses", "a woman with glasses"], num_images=2, seed=1,
                             return_codes=True)
    assert isinstance(varied, Generation) and len(varied.images) == 4 and varied.seeds == [1, 2, 3, 4]
    assert [tuple(codes.shape) for codes in varied.codes] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]
    for scale in range(2):  # the kept scales: each source's, for both of its images
        assert torch.equal(varied.codes[scale][0], varied.codes[scale][1])
    masks = [band_mask(), band_mask()]
    assert len(pipe.inpaint(sources, masks, ["a man with glasses", "a woman with glasses"], seed=0)) == 2


def test_mix_equals_generate_mixed(pipe: ImagePipeline, tiny_pipeline: Pipeline) -> None:
    images = pipe.mix(["a man", "a woman"], ["a woman with glasses", "a man with a beard"], switch_scale=1, seed=6)
    expected = generate_mixed(tiny_pipeline, [["a man", "a woman with glasses", "a woman with glasses"],
                                              ["a woman", "a man with a beard", "a man with a beard"]], 6,
                              pipe.sampling_config())
    np.testing.assert_array_equal(arrays(images), to_arrays(expected.images))
    per_scale = ["a man", "a man with glasses", "a woman"]
    result = pipe.mix(scale_prompts=per_scale, num_images=2, seed=0, return_codes=True)
    assert isinstance(result, Generation) and result.prompts == [per_scale, per_scale] and result.seeds == [0, 1]
    default_switch = pipe.mix("a man", "a woman", seed=0)  # half the scales: 3 // 2 = 1
    np.testing.assert_array_equal(arrays(default_switch), arrays(pipe.mix("a man", "a woman", switch_scale=1)))


def test_zoom_returns_levels_and_frames(pipe: ImagePipeline, tiny_pipeline: Pipeline) -> None:
    prompts = ["a man", "a man with glasses", "a man with a beard"]
    result = pipe.zoom(prompts, seed=4, frames_per_level=2, frame_size=24)
    assert isinstance(result, Zoom) and result.prompts == prompts and result.factor == 2
    assert len(result.levels) == 3 and all(level.size == (SIZE, SIZE) for level in result.levels)
    assert len(result.frames) == 5 and all(frame.size == (24, 24) for frame in result.frames)
    expected = zoom(tiny_pipeline, prompts, 4, pipe.sampling_config())
    np.testing.assert_array_equal(arrays(result.levels), np.concatenate([to_arrays(level) for level in
                                                                         expected.levels]))
    out = pipe.zoom(prompts[:2], seed=4, zoom_out=True, frames_per_level=2, frame_size=16)
    assert out.prompts == prompts[:2][::-1]  # the widest first
    np.testing.assert_array_equal(np.asarray(out.frames[0]), np.asarray(out.levels[-1]))  # from the deepest out


def test_class_conditional_pipelines_take_labels(tmp_path: Path) -> None:
    tokenizer_config = tiny_tokenizer_config()
    torch.manual_seed(0)
    transformer = tiny_transformer(tokenizer_config, num_classes=5, cross_attention=False)
    directory = write_pipeline(tmp_path / "classes", MultiScaleVQVAE(tokenizer_config).eval(), transformer, None, None)
    pipe = nextscale.load_pipeline(directory)
    assert pipe.num_classes == 5
    expected = to_arrays(generate(pipe.pipeline, [3, 1], 2, pipe.sampling_config()).images)
    np.testing.assert_array_equal(arrays(pipe([3, 1], seed=2)), expected)
    np.testing.assert_array_equal(arrays(pipe(class_label=[3, 1], seed=2)), expected)
    single = pipe(3, seed=2, return_codes=True)
    assert isinstance(single, Generation) and single.prompts == [3]
    # a batch of one: the same codes, the pixels up to the decoder's rounding
    np.testing.assert_allclose(arrays(single.images).astype(int), expected[:1].astype(int), atol=1)
    with pytest.raises(ValueError, match=r"class-conditional: pass class labels \(ints 0 to 4\)"):
        pipe("a cat")
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 4\], got \[7\]"):
        pipe(7)


@pytest.mark.parametrize(("call", "message"), [
    (lambda pipe: pipe(), "no prompt given: pass a text prompt"),
    (lambda pipe: pipe([]), "the list of prompts is empty"),
    (lambda pipe: pipe(207), "this pipeline is text-conditioned: pass text prompts, got class labels"),
    (lambda pipe: pipe("a", class_label=1), "pass a prompt or class_label, not both"),
    (lambda pipe: pipe("a", num_images=0), "num_images must be a whole number >= 1, got 0"),
    (lambda pipe: pipe("a", num_images=2, seed=[1]), "got 1 seeds for 2 images"),
    (lambda pipe: pipe("a", seed=-1), r"seeds must be in \[0, "),
    (lambda pipe: pipe("a", seed=1.5), "seed must be an int"),
    (lambda pipe: pipe("a", cfg_scale=float("nan")), "cfg_scale must be a finite number, got nan"),
    (lambda pipe: pipe("a", cfg_scale=-1), "cfg_scale must be >= 0"),
    (lambda pipe: pipe("a", top_p=2), r"top_p must be in \[0, 1\], got 2"),
    (lambda pipe: pipe("a", top_k=-3), "top_k must be a whole number >= 0"),
    (lambda pipe: pipe("a", batch_size=0), "batch_size must be a whole number >= 1"),
    (lambda pipe: pipe.inpaint(torch.zeros(1, 3, 16, 16), band_mask(), "a"), "image must be a PIL image or an image "
     r"file, got Tensor \(tensors in \[-1, 1\] go to nextscale.sampling.editing\)"),
    (lambda pipe: pipe.inpaint("missing.png", band_mask(), "a"), "image missing.png does not exist"),
    (lambda pipe: pipe.inpaint(Image.new("RGB", (16, 16)), band_mask(8), "a"), "the mask is 8x8 but the image is "
     "16x16"),
    (lambda pipe: pipe.inpaint(Image.new("RGB", (16, 16)), Image.new("L", (16, 16)), "a"), "the mask is all black"),
    (lambda pipe: pipe.inpaint([Image.new("RGB", (16, 16))] * 3, band_mask(), ["a", "b"]), "got 3 images for 2 "
     "prompts"),
    (lambda pipe: pipe.outpaint(Image.new("RGB", (16, 16)), (8, 0, 8, 0), "a"), "leaves no room for the image"),
    (lambda pipe: pipe.variations(Image.new("RGB", (16, 16)), 0, "a"), "keep_scales must be a whole number >= 1"),
    (lambda pipe: pipe.variations(Image.new("RGB", (16, 16)), 4, "a"), "more than the model's 3 scales"),
    (lambda pipe: pipe.mix("a"), "mix needs detail_prompt"),
    (lambda pipe: pipe.mix("a", "b", switch_scale=3), r"must be in \[1, 2\]"),
    (lambda pipe: pipe.mix(["a", "b"], "c"), "got 2 prompts and 1 detail prompts"),
    (lambda pipe: pipe.mix(scale_prompts=["a", "b"]), "got 2 scale_prompts but this model has 3 scales"),
    (lambda pipe: pipe.zoom("a man"), "a zoom needs a list of at least two prompts"),
    (lambda pipe: pipe.zoom(["a", "b"], factor=3), "zoom-factor must be one of"),
])
def test_bad_input_is_one_clear_value_error(pipe: ImagePipeline, call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        call(pipe)
    assert "\n" not in str(raised.value)


def test_a_misspelt_setting_is_a_type_error(pipe: ImagePipeline) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'cfg'"):
        pipe("a", cfg=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'cfg'"):
        pipe.mix("a", "b", cfg=2)


def test_nextscale_load_pipeline_samples_the_bundled_demo() -> None:
    pipe = nextscale.load_pipeline()
    assert pipe.sampling_config() == SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    images = pipe("a man with a beard", num_images=4, seed=0)  # the README's three lines
    expected = generate(pipe.pipeline, ["a man with a beard"] * 4, 0, SamplingConfig(cfg_scale=2.0, top_k=None,
                                                                                     top_p=1.0))
    np.testing.assert_array_equal(arrays(images), to_arrays(expected.images))
    assert "64 px" in repr(pipe)
    with pytest.raises(ValueError, match="dtype must be one of"):
        nextscale.load_pipeline(dtype="int4")


def test_the_front_door_loads_int8_and_a_decoder_dtype():
    """`nextscale.load_pipeline` takes what `sample.py --dtype int8 --decoder-dtype` takes."""
    from nextscale import load_pipeline as front_door

    quantised = front_door(dtype="int8", decoder_dtype="float32")
    images = quantised("a man with a beard", num_images=2, seed=0)
    assert len(images) == 2 and images[0].size == (64, 64)
