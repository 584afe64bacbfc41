"""`sample.py`'s editing, per-scale prompt and zoom options, and what they run.

    sample.py --image in.png --mask mask.png --prompt "a man with glasses"        # inpaint (white = regenerate)
    sample.py --image in.png --outpaint 16 16 16 16 --prompt "... on a red background"
    sample.py --image in.png --keep-scales 3 --prompt "a woman with glasses"     # variations
    sample.py --prompt A --detail-prompt B --switch-scale 3                      # layout from A, details from B
    sample.py --zoom --prompt P0 --prompt P1 --prompt P2 --zoom-factor 2         # zoom stack + GIF
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tyro.conf import UseAppendAction

from nextscale.errors import fail
from nextscale.images import save_grid
from nextscale.sampling.condition import Condition
from nextscale.sampling.editing import (
    EditOptions,
    InputError,
    check_sides,
    edit,
    load_image,
    load_mask,
    outpaint_canvas,
)
from nextscale.sampling.mixing import mixed_conditions, switch_prompts
from nextscale.sampling.outputs import image_stem, save_images
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, sample_scales
from nextscale.sampling.zoom import ZOOM_FACTORS, ZoomOptions, zoom
from nextscale.sampling.zoom_video import save_zoom


@dataclass(frozen=True)
class EditArgs:
    """Editing and per-scale prompts (all optional)."""

    image: Path | None = None
    """An image to edit (any size or mode: centre-cropped, resized and converted to the model's input)."""
    mask: Path | None = None
    """Inpainting mask for --image, same size as the image: white = regenerate, black = keep."""
    outpaint: tuple[int, int, int, int] | None = None
    """Outpaint --image: LEFT TOP RIGHT BOTTOM pixels of new canvas (model resolution); the image shrinks
    into the rest."""
    keep_scales: int = 0
    """Variations of --image: keep its first k scales (layout, colours), sample the rest from the prompt."""
    blend: bool = True
    """Put the kept pixels of an inpaint/outpaint back exactly after decoding (--no-blend: as decoded)."""
    detail_prompt: str | None = None
    """Prompt of the scales from --switch-scale on (details); --prompt gives the coarser scales (layout). A
    model trained with the layout context (train_var --model.layout-context; the bundled demo is) also shows
    the later scales --prompt, so more of its layout survives."""
    switch_scale: int | None = None
    """First scale drawn from --detail-prompt (default: half the scales)."""
    scale_prompt: UseAppendAction[tuple[str, ...]] = ()
    """One prompt per scale, coarse to fine (repeat the flag once per scale); replaces --prompt."""

    @property
    def editing(self) -> bool:
        return self.image is not None

    @property
    def mixing(self) -> bool:
        return self.detail_prompt is not None or bool(self.scale_prompt)


@dataclass(frozen=True)
class ZoomArgs:
    """Zoom stacks ("powers of ten")."""

    zoom: bool = False
    """Render a zoom: one level per --prompt (P0 the widest), each the centre 1/--zoom-factor of the one before."""
    zoom_factor: int = 2
    """Zoom between consecutive levels (2 or 4)."""
    zoom_out: bool = False
    """Zoom out: each new level shrinks the previous one into its centre and outpaints the border."""
    zoom_keep_scales: int | None = None
    """Scales of a zoomed-in level kept from its parent's centre (default: those the crop determines)."""
    zoom_frames: int = 12
    """Frames per level of the zoom GIF/MP4."""
    zoom_frame_size: int = 256
    """Side of the zoom GIF/MP4 frames in pixels."""


def check_edit_args(edit_args: EditArgs, zoom_args: ZoomArgs, num_scales: int | None = None) -> None:
    """One-line errors (exit 2) for option combinations that cannot work; the checks that need the model's
    number of scales run only when it is given (so the rest run before the model loads)."""
    if edit_args.mask is not None and edit_args.image is None:
        fail("--mask needs --image (the image to inpaint)")
    if edit_args.outpaint is not None and edit_args.image is None:
        fail("--outpaint needs --image (the image to extend)")
    if edit_args.keep_scales and edit_args.image is None:
        fail("--keep-scales needs --image (the image whose coarse scales are kept)")
    for flag, path in (("--image", edit_args.image), ("--mask", edit_args.mask)):
        if path is not None and not path.is_file():
            fail(f"{flag} {path} does not exist or is not a file")
    if edit_args.mask is not None and edit_args.outpaint is not None:
        fail("--mask and --outpaint both say what to regenerate: give one of them")
    if edit_args.image is not None and edit_args.mask is None and edit_args.outpaint is None \
            and not edit_args.keep_scales:
        fail("--image needs --mask (inpaint), --outpaint L T R B or --keep-scales k (variations)")
    if edit_args.keep_scales < 0:
        fail(f"--keep-scales must be >= 0 (how many of the model's first scales to keep), got "
                          f"{edit_args.keep_scales}")
    if num_scales is not None and edit_args.keep_scales > num_scales:
        fail(f"--keep-scales must be in [0, {num_scales}] (the model's scales), got "
                          f"{edit_args.keep_scales}")
    if edit_args.detail_prompt is not None and edit_args.scale_prompt:
        fail("--detail-prompt and --scale-prompt both set per-scale prompts: give one of them")
    if edit_args.switch_scale is not None and edit_args.detail_prompt is None:
        fail("--switch-scale needs --detail-prompt")
    if num_scales is not None and edit_args.scale_prompt and len(edit_args.scale_prompt) != num_scales:
        fail(f"--scale-prompt was given {len(edit_args.scale_prompt)} times but this model has "
                          f"{num_scales} scales: give one per scale")
    if zoom_args.zoom and (edit_args.editing or edit_args.mixing):
        fail("--zoom takes only --prompt (one per level): drop the editing options")
    if zoom_args.zoom_factor not in ZOOM_FACTORS:
        fail(f"--zoom-factor must be one of {ZOOM_FACTORS}, got {zoom_args.zoom_factor}")


def prompts_per_scale(edit_args: EditArgs, prompt: str, num_scales: int) -> list[str]:
    """The per-scale prompts of one image (or the prompt at every scale)."""
    if edit_args.scale_prompt:
        return list(edit_args.scale_prompt)
    if edit_args.detail_prompt is not None:
        switch = edit_args.switch_scale if edit_args.switch_scale is not None else num_scales // 2
        try:
            return switch_prompts(prompt, edit_args.detail_prompt, switch, num_scales)
        except ValueError as error:
            fail(str(error))
    return [prompt] * num_scales


def read_edit_inputs(edit_args: EditArgs, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image (1, 3, S, S) (placed on its canvas for outpainting) and the known pixels (1, S, S) or None."""
    try:
        assert edit_args.image is not None
        image, original_size, messages = load_image(edit_args.image, size)
        for message in messages:
            print(f"note: --image {edit_args.image}: {message}")
        if edit_args.mask is not None:
            return image, load_mask(edit_args.mask, size, original_size)
        if edit_args.outpaint is not None:
            check_sides(edit_args.outpaint, size)
            return outpaint_canvas(image, edit_args.outpaint)
        return image, None
    except InputError as error:
        fail(str(error))


@torch.inference_mode()
def run_edits(edit_args: EditArgs, pipeline: Pipeline, jobs: Sequence[str], seed: int, config: SamplingConfig,
              batch_size: int, out: Path, progress: bool) -> tuple[list[Path], torch.Tensor]:
    """Edits and/or per-scale prompts for every job (one prompt each); returns written paths and images."""
    num_scales, size = pipeline.transformer.config.num_scales, pipeline.tokenizer.config.image_size
    image, known = read_edit_inputs(edit_args, size) if edit_args.editing else (None, None)
    options = EditOptions(keep_scales=edit_args.keep_scales, blend=edit_args.blend)
    written, images = [], []
    if image is not None:
        written += save_images(image, ["input"], out)
    for start in range(0, len(jobs), batch_size):
        batch = list(jobs[start : start + batch_size])
        seeds = [seed + index for index in range(start, start + len(batch))]
        per_scale = [list(row) for row in zip(*(prompts_per_scale(edit_args, p, num_scales) for p in batch))]
        conditions: list[Condition] = mixed_conditions(pipeline, per_scale, config)
        if image is not None:
            result = edit(pipeline, image, conditions, known, seeds, config, options, progress=progress)
            batch_images = result.images
        else:
            loop = sample_scales(pipeline, conditions, seeds, config, progress=progress)
            batch_images = pipeline.tokenizer.decode_latent(loop.accumulated).float()
        stems = [image_stem(index, prompt) for index, prompt in enumerate(batch, start)]
        written += save_images(batch_images, stems, out)
        images.append(batch_images)
    return written, torch.cat(images)


def run_zoom(zoom_args: ZoomArgs, pipeline: Pipeline, prompts: Sequence[str], chains: int, seed: int,
             config: SamplingConfig, out: Path, progress: bool) -> list[Path]:
    """A zoom stack over the prompts (one level each) for `chains` seeds: PNG per level, GIF (+ MP4), grid."""
    if len(prompts) < 2:
        fail("--zoom needs at least two prompts (--prompt P0 --prompt P1 ...), one per level")
    scales = pipeline.transformer.config.num_scales
    if zoom_args.zoom_keep_scales is not None and not 1 <= zoom_args.zoom_keep_scales <= scales:
        fail(f"--zoom-keep-scales must be in [1, {scales}], got {zoom_args.zoom_keep_scales}")
    options = ZoomOptions(factor=zoom_args.zoom_factor, zoom_out=zoom_args.zoom_out,
                          keep_scales=zoom_args.zoom_keep_scales)
    result = zoom(pipeline, prompts, seed, config, options, batch=chains, progress=progress)
    written = save_zoom(result.levels, result.prompts, result.factor, out, zoom_out=zoom_args.zoom_out,
                        frames_per_level=zoom_args.zoom_frames, frame_size=zoom_args.zoom_frame_size)
    written.append(save_grid(list(result.levels), out / "grid.png"))
    agreement = ", ".join(f"{float(value.mean()):.1f}" for value in result.agreement_psnr())
    print(f"zoom: {len(prompts)} levels x {chains}; low-frequency agreement before blending (dB): {agreement}")
    return written
