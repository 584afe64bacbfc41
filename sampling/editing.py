"""Editing on the one scale loop: inpainting, outpainting and variations (image-to-image).

All three encode the source image with the tokenizer and teacher-force its codes where they are known
(`ScaleConstraints`), so the transformer invents only the rest, conditioned on what is kept (VAR,
Tian et al. 2024, Sec. 7, zero-shot editing):

- inpaint: a pixel mask (white = regenerate) -> per-scale token masks (`token_masks` with
  `edit_thresholds`: a coarse token is kept when half its cell is kept, a fine one at three quarters);
- outpaint: the image is shrunk into a box of the canvas; everything around it is regenerated;
- variations: the first k scales (layout and colours) come from the image, the rest from the prompt.

The kept pixels can be put back after decoding (`blend_kept`, on by default where there is a mask),
since the tokenizer's round trip changes them a little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nextscale.decoding import UndecodableImage, open_image, to_rgb
from nextscale.images import from_uint8
from nextscale.sampling.blend import blend_kept
from nextscale.sampling.condition import Condition, build_condition
from nextscale.sampling.constraints import ScaleConstraints, edit_thresholds, token_masks
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, sample_scales


class InputError(ValueError):
    """A user's input (image, mask, sides) is unusable; the message is one line that says what to do."""


@dataclass(frozen=True)
class EditOptions:
    """How known content constrains the loop and how the kept pixels are restored."""

    keep_scales: int = 0
    """Keep the first k scales of the encoded image entirely (variations: layout and colours from the image)."""
    coarse_threshold: float = 0.5
    """A token of a coarse scale (side <= half the latent's) is kept when this fraction of its cell is kept."""
    fine_threshold: float = 0.75
    """A token of a finer scale is kept when this fraction of its pixel cell is kept (1: the whole cell)."""
    requantize: bool = True
    """Re-quantise kept tokens from what the scales so far leave of the image (else: the image's own codes)."""
    blend: bool = True
    """Put the kept pixels back after decoding (where there is a mask: inpaint, outpaint)."""
    feather: float = 1.0
    """Pixels over which the blend fades into the regenerated region (0: a hard edge)."""

    def __post_init__(self) -> None:
        if self.keep_scales < 0:
            raise ValueError(f"keep_scales must be >= 0, got {self.keep_scales}")
        for name in ("coarse_threshold", "fine_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.feather < 0:
            raise ValueError(f"feather must be >= 0, got {self.feather}")


@dataclass
class EditResult:
    """What `edit` returns."""

    images: torch.Tensor
    """(b, 3, H, W) in [-1, 1]: the edits, kept pixels blended back when asked."""
    unblended: torch.Tensor
    """(b, 3, H, W): the decoded edits before the blend (what the kept-region PSNR measures)."""
    codes: list[torch.Tensor]
    """Per-scale codes [(b, s, s), ...]."""
    constraints: ScaleConstraints
    """The known codes and token masks the loop used."""


# -- reading inputs ----------------------------------------------------------------------------------


PICTURE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""The decoders tried on an input picture (its content decides, not its name)."""
MAX_PICTURE_PIXELS = 64_000_000
"""Pictures declaring more pixels are refused before decoding (a decompression bomb)."""


def open_picture(path: str | Path, what: str) -> Image.Image:
    """A PIL image from `path`, decoded as every reader decodes (`nextscale.decoding`: EXIF orientation
    applied, its own mode kept), or an InputError naming the option and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        return open_image(path.read_bytes(), PICTURE_FORMATS, MAX_PICTURE_PIXELS)
    except UndecodableImage as error:
        raise InputError(f"{what} {path} is not a readable image ({error}); give a PNG or JPEG") from None
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read ({error})") from None


def square_resize(picture: Image.Image, size: int, resample: Image.Resampling) -> tuple[Image.Image, list[str]]:
    """Centre-crop to a square and resize to size x size; the messages say what was changed."""
    messages = []
    width, height = picture.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
        messages.append(f"centre-cropped {width}x{height} to {side}x{side}")
    if picture.size != (size, size):
        messages.append(f"resized {picture.size[0]}x{picture.size[1]} to the model's {size}x{size}")
        picture = picture.resize((size, size), resample)
    return picture, messages


def image_to_tensor(picture: Image.Image, size: int) -> tuple[torch.Tensor, list[str]]:
    """Any PIL image -> (1, 3, size, size) in [-1, 1] (RGB, centre-cropped, resized) and what was done."""
    messages = []
    if picture.mode != "RGB":
        messages.append(f"converted {picture.mode} to RGB")
        picture = to_rgb(picture)
    picture, resized = square_resize(picture, size, Image.Resampling.LANCZOS)
    array = torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy())  # (H, W, 3)
    return from_uint8(array.permute(2, 0, 1).unsqueeze(0)), messages + resized


def load_image(path: str | Path, size: int) -> tuple[torch.Tensor, tuple[int, int], list[str]]:
    """An image file -> ((1, 3, size, size) in [-1, 1], its original (width, height), messages)."""
    picture = open_picture(path, "--image")
    tensor, messages = image_to_tensor(picture, size)
    return tensor, picture.size, messages


def mask_to_known(picture: Image.Image, size: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask picture (white = regenerate) -> known pixels (1, size, size) bool, True = kept.

    The mask must have the image's size (it is cropped and resized like the image) and must neither keep
    everything nor nothing.
    """
    if image_size is not None and picture.size != image_size:
        raise InputError(f"the mask is {picture.size[0]}x{picture.size[1]} but the image is "
                         f"{image_size[0]}x{image_size[1]}: give a mask of the image's size")
    grey = to_rgb(picture, background=None).convert("L")  # a mask's alpha is not its content
    regenerate = np.asarray(grey, dtype=np.uint8) >= 128
    if not regenerate.any():
        raise InputError("the mask is all black (nothing to regenerate): paint the region to regenerate white")
    if regenerate.all():
        raise InputError("the mask is all white (nothing kept): sample without --image, or use --keep-scales "
                         "for a variation")
    resized, _ = square_resize(Image.fromarray(regenerate.astype(np.uint8) * 255), size, Image.Resampling.BOX)
    known = torch.from_numpy(np.asarray(resized, dtype=np.uint8) < 128).unsqueeze(0)  # (1, size, size)
    if bool(known.all()) or not bool(known.any()):
        kept = "everything" if known.all() else "nothing"
        raise InputError(f"at the model's {size}x{size} resolution the mask keeps {kept}: paint a larger (or "
                         "smaller) region white")
    return known


def load_mask(path: str | Path, size: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask file (white = regenerate) -> known pixels (1, size, size) bool."""
    return mask_to_known(open_picture(path, "--mask"), size, image_size)


# -- building edits ---------------------------------------------------------------------------------


def check_sides(sides: Sequence[int], size: int) -> tuple[int, int, int, int]:
    """Validate outpainting sides (left, top, right, bottom) in pixels of a size x size canvas."""
    if len(sides) != 4:
        raise InputError(f"--outpaint takes 4 numbers LEFT TOP RIGHT BOTTOM, got {len(sides)}")
    left, top, right, bottom = (int(side) for side in sides)
    if min(left, top, right, bottom) < 0:
        raise InputError(f"--outpaint sides must be >= 0 pixels, got {tuple(sides)}")
    if left + top + right + bottom == 0:
        raise InputError("--outpaint 0 0 0 0 adds nothing: give the pixels to add on each side")
    if left + right >= size or top + bottom >= size:
        raise InputError(f"--outpaint {tuple(sides)} leaves no room for the image on the {size}x{size} canvas: "
                         f"keep left + right and top + bottom below {size}")
    return left, top, right, bottom


def outpaint_canvas(image: torch.Tensor, sides: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Place (b, 3, S, S) images in the box left by `sides` (left, top, right, bottom pixels) of an S x S canvas.

    The image is shrunk to fit the box (square, centred in it); the rest of the canvas is filled with the
    image's mean colour and regenerated. Returns the canvas (b, 3, S, S) and the known pixels (b, S, S).
    """
    size = image.shape[-1]
    left, top, right, bottom = check_sides(sides, size)
    box_width, box_height = size - left - right, size - top - bottom
    side = min(box_width, box_height)
    x0, y0 = left + (box_width - side) // 2, top + (box_height - side) // 2
    canvas = image.mean(dim=(2, 3), keepdim=True).expand_as(image).clone()
    canvas[:, :, y0 : y0 + side, x0 : x0 + side] = F.interpolate(image, size=(side, side), mode="area")
    known = torch.zeros(image.shape[0], size, size, dtype=torch.bool, device=image.device)
    known[:, y0 : y0 + side, x0 : x0 + side] = True
    return canvas, known


@torch.inference_mode()
def edit(
    pipeline: Pipeline,
    image: torch.Tensor,
    prompts: Sequence[str] | Condition | Sequence[Condition],
    known: torch.Tensor | None = None,
    seeds: Sequence[int] | int = 0,
    config: SamplingConfig | None = None,
    options: EditOptions | None = None,
    *,
    progress: bool = False,
) -> EditResult:
    """Regenerate the unknown part of `image` (b or 1, 3, S, S) in [-1, 1] from prompts (or conditions).

    `known` (b or 1, S, S) bool marks the kept pixels (None: no pixel constraint, e.g. variations with
    `options.keep_scales`). A single image or mask serves every prompt.
    """
    config, options = config or SamplingConfig(), options or EditOptions()
    tokenizer = pipeline.tokenizer
    size, scale_sizes = tokenizer.config.image_size, tokenizer.config.scale_sizes
    if isinstance(prompts, Condition):
        conditions: Condition | list[Condition] = prompts
    elif prompts and isinstance(prompts[0], Condition):
        conditions = list(prompts)  # type: ignore[arg-type]
    else:
        unconditional = config.needs_unconditional(len(scale_sizes))
        conditions = build_condition(pipeline, list(prompts), unconditional)  # type: ignore[arg-type]
    batch = (conditions if isinstance(conditions, Condition) else conditions[0]).batch_size
    if image.dim() != 4 or image.shape[1:] != (3, size, size):
        raise InputError(f"images must be (b, 3, {size}, {size}), got {tuple(image.shape)}: resize them first")
    if options.keep_scales > len(scale_sizes):
        raise InputError(f"--keep-scales {options.keep_scales} is more than the model's {len(scale_sizes)} scales")
    if known is None and options.keep_scales == 0:
        raise InputError("nothing is kept: give a mask (inpaint), --outpaint sides or --keep-scales k (k >= 1)")
    if image.shape[0] not in (1, batch) or (known is not None and known.shape[0] not in (1, batch)):
        raise InputError(f"{batch} prompts but {image.shape[0]} images: give one image, or one per prompt")
    image = image.to(pipeline.device, next(tokenizer.parameters()).dtype).expand(batch, -1, -1, -1)
    pixels = torch.zeros(batch, size, size, dtype=torch.bool, device=pipeline.device)
    if known is not None:
        pixels = known.to(pipeline.device).expand(batch, -1, -1)
    latent = tokenizer.encoder(image)
    codes = tokenizer.quantizer(latent).codes
    thresholds = edit_thresholds(scale_sizes, tokenizer.config.latent_size, options.coarse_threshold,
                                 options.fine_threshold)
    masks = token_masks(pixels, scale_sizes, thresholds, options.keep_scales)
    constraints = ScaleConstraints(tuple(codes), tuple(masks), latent.float() if options.requantize else None)
    result = sample_scales(pipeline, conditions, seeds, config, constraints=constraints, progress=progress)
    unblended = tokenizer.decode_latent(result.accumulated).float()
    images = unblended
    if known is not None and options.blend:
        images = blend_kept(unblended, image.float(), pixels, options.feather)
    return EditResult(images, unblended, result.codes, constraints)


def inpaint(pipeline: Pipeline, image: torch.Tensor, known: torch.Tensor, prompts: Sequence[str],
            seeds: Sequence[int] | int = 0, config: SamplingConfig | None = None,
            options: EditOptions | None = None) -> EditResult:
    """Regenerate the pixels where `known` (b or 1, S, S) is False, following the prompts."""
    return edit(pipeline, image, prompts, known, seeds, config, options)


def outpaint(pipeline: Pipeline, image: torch.Tensor, sides: Sequence[int], prompts: Sequence[str],
             seeds: Sequence[int] | int = 0, config: SamplingConfig | None = None,
             options: EditOptions | None = None) -> EditResult:
    """Shrink the image into the box that `sides` (left, top, right, bottom pixels) leave; generate the rest."""
    canvas, known = outpaint_canvas(image, sides)
    return edit(pipeline, canvas, prompts, known, seeds, config, options)


def variations(pipeline: Pipeline, image: torch.Tensor, keep_scales: int, prompts: Sequence[str],
               seeds: Sequence[int] | int = 0, config: SamplingConfig | None = None) -> EditResult:
    """Keep the first `keep_scales` scales of the image (layout, colours); sample the rest from the prompts."""
    return edit(pipeline, image, prompts, None, seeds, config, EditOptions(keep_scales=keep_scales))
