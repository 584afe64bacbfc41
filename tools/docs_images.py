"""The pictures of README.md and docs/, drawn by the bundled demo model through the Python front door
(`nextscale.load_pipeline`) with fixed prompts and seeds, so that they can always be made again:

    make docs-images                                # writes them into docs/
    python tools/docs_images.py --out /tmp/figures  # anywhere else

Every figure is a grid of 64 px images with 2 px white padding (`nextscale.images.make_grid`), sampled
with the pipeline's recommended settings (the bundle's: cfg 2, top-k and top-p off):
- progression.png: one row per prompt, the picture after every scale (1x1 mean colour ... final image);
- editing_inpaint.png: generated sources without glasses; the regenerated eye band in white; the
  inpaintings asking for glasses (kept pixels blended back);
- editing_outpaint.png: the same sources; each shrunk into the centre (16 px on every side) and the border
  outpainted from its prompt with another background;
- editing_variations.png: the same sources; variations keeping their first 2, 3 and 4 scales, from
  prompts naming only the gender and glasses;
- per_scale_prompts.png: prompt A alone, prompt B alone, then A switched to B at scale 2, 3, 4 and 5 (the
  first eight pairs and seeds of the per-scale prompt evaluation, `nextscale.portraits.editing`);
- zoom_levels.png: 2x zoom stacks (rows 1x, 2x, 4x after blending; columns four chains, seeds 100-103,
  the zoom evaluation's first four);
- zoom_frames.png: seven frames of the first chain's continuous zoom.
A figure drawn with the same pixels as its file leaves the file untouched, so a run shows in `git status`
only the pictures that really changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nextscale import Generation, ImagePipeline, Zoom, load_pipeline
from nextscale.images import from_uint8, make_grid

PROGRESSION_PROMPTS = (
    "a man with a beard and glasses on a blue background",
    "a smiling woman with long red hair",
    "a man with short grey hair and dark skin on a yellow background",
    "a woman with blond hair and glasses on a green background",
)

# (source without glasses, the same asking for glasses, the same on another background)
EDIT_PROMPTS = (
    ("a clean-shaven man with brown hair and medium skin without glasses on a purple background",
     "a clean-shaven man with glasses, brown hair and medium skin on a purple background",
     "a clean-shaven man with brown hair and medium skin without glasses on a yellow background"),
    ("a man with a beard, red hair and light skin without glasses on a grey background",
     "a man with a beard, glasses, red hair and light skin on a grey background",
     "a man with a beard, red hair and light skin without glasses on a green background"),
    ("a woman with brown hair and dark skin without glasses on a purple background",
     "a woman with glasses, brown hair and dark skin on a purple background",
     "a woman with brown hair and dark skin without glasses on a red background"),
    ("a woman with red hair and medium skin without glasses on a green background",
     "a woman with glasses, red hair and medium skin on a green background",
     "a woman with red hair and medium skin without glasses on a blue background"),
    ("a clean-shaven man with brown hair and dark skin without glasses on a yellow background",
     "a clean-shaven man with glasses, brown hair and dark skin on a yellow background",
     "a clean-shaven man with brown hair and dark skin without glasses on a purple background"),
    ("a man with a beard, black hair and light skin without glasses on a yellow background",
     "a man with a beard, glasses, black hair and light skin on a yellow background",
     "a man with a beard, black hair and light skin without glasses on a blue background"),
    ("a woman with blond hair and light skin without glasses on a blue background",
     "a woman with glasses, blond hair and light skin on a blue background",
     "a woman with blond hair and light skin without glasses on a green background"),
    ("a woman with grey hair and dark skin without glasses on a red background",
     "a woman with glasses, grey hair and dark skin on a red background",
     "a woman with grey hair and dark skin without glasses on a yellow background"),
)
VARIATION_PROMPTS = tuple("a woman with glasses" if "woman" in source else "a man with glasses"
                          for source, _, _ in EDIT_PROMPTS)
EYE_BAND = (0.30, 0.53, 0.25, 0.75)
"""The regenerated band of the inpainting (top, bottom, left, right as fractions of the side)."""
OUTPAINT_SIDES = (16, 16, 16, 16)
VARIATION_KEEP_SCALES = (2, 3, 4)

MIX_PROMPTS = (  # (A: layout, B: details), disagreeing on background, hair colour, skin, glasses and beard
    ("a clean-shaven man with brown hair and medium skin without glasses on a purple background",
     "a man with a beard, glasses, blond hair and dark skin on a yellow background"),
    ("a man with a beard, red hair and light skin without glasses on a grey background",
     "a clean-shaven man with glasses, brown hair and dark skin on a red background"),
    ("a woman with brown hair and dark skin without glasses on a purple background",
     "a woman with glasses, black hair and light skin on a yellow background"),
    ("a woman with glasses, grey hair and medium skin on a yellow background",
     "a woman with brown hair and light skin without glasses on a grey background"),
    ("a woman with red hair and medium skin without glasses on a green background",
     "a woman with glasses, blond hair and light skin on a purple background"),
    ("a woman with glasses, black hair and medium skin on a yellow background",
     "a woman with brown hair and dark skin without glasses on a grey background"),
    ("a clean-shaven man with brown hair and dark skin without glasses on a yellow background",
     "a man with a beard, glasses, black hair and medium skin on a grey background"),
    ("a man with a beard, black hair and light skin without glasses on a yellow background",
     "a clean-shaven man with glasses, brown hair and dark skin on a purple background"),
)
SWITCH_SCALES = (2, 3, 4, 5)

ZOOM_SEED = 100
ZOOM_FACTOR = 2
ZOOM_CHAINS = (  # per chain: the prompt of 1x, 2x and 4x
    ("a serious woman with long black hair and light skin without glasses on a yellow background",
     "a close-up of the face of a serious woman with long black hair and light skin without glasses on a yellow "
     "background",
     "an extreme close-up of the eyes of a serious woman with light skin without glasses"),
    ("a serious woman with long grey hair and dark skin without glasses on a green background",
     "a close-up of the face of a serious woman with long grey hair and dark skin without glasses on a green "
     "background",
     "an extreme close-up of the eyes of a serious woman with dark skin without glasses"),
    ("a serious clean-shaven man with short blond hair and medium skin without glasses on a purple background",
     "a close-up of the face of a serious clean-shaven man with short blond hair and medium skin without glasses "
     "on a purple background",
     "an extreme close-up of the eyes of a serious clean-shaven man with medium skin without glasses"),
    ("a smiling woman with short grey hair and medium skin without glasses on a grey background",
     "a close-up of the face of a smiling woman with short grey hair and medium skin without glasses on a grey "
     "background",
     "an extreme close-up of the eyes of a smiling woman with medium skin without glasses"),
)
ZOOM_FRAMES_SHOWN = 7
ZOOM_FRAME_SIZE = 128


def grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Rows of equally sized pictures -> one picture, 2 px white padding (the project's `make_grid`)."""
    pictures = [picture.convert("RGB") for row in rows for picture in row]
    arrays = torch.from_numpy(np.stack([np.asarray(picture) for picture in pictures])).permute(0, 3, 1, 2)
    return make_grid(from_uint8(arrays), columns=len(rows[0]))


class Drawing:
    """One run's pipeline and the inputs several figures share (sampled once)."""

    def __init__(self, pipe: ImagePipeline) -> None:
        self.pipe = pipe

    @cached_property
    def sources(self) -> list[Image.Image]:
        """The generated portraits without glasses that the editing figures start from (seeds 0-7)."""
        return self.pipe([source for source, _, _ in EDIT_PROMPTS], seed=0)  # type: ignore[return-value]

    @cached_property
    def zooms(self) -> list[Zoom]:
        """The zoom chains (seeds ZOOM_SEED + chain)."""
        return [self.pipe.zoom(list(prompts), seed=ZOOM_SEED + chain, factor=ZOOM_FACTOR, frames_per_level=4,
                               frame_size=ZOOM_FRAME_SIZE) for chain, prompts in enumerate(ZOOM_CHAINS)]


def progression(drawing: Drawing) -> Image.Image:
    result = drawing.pipe(list(PROGRESSION_PROMPTS), seed=0, return_progression=True)
    assert isinstance(result, Generation) and result.progression is not None
    return grid(result.progression)


def eye_band_mask(size: int) -> Image.Image:
    """White (regenerate) on the eye band, black elsewhere."""
    top, bottom, left, right = (round(fraction * size) for fraction in EYE_BAND)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def editing_inpaint(drawing: Drawing) -> Image.Image:
    sources = drawing.sources
    mask = eye_band_mask(drawing.pipe.image_size)
    white = Image.new("RGB", mask.size, (255, 255, 255))
    banded = [Image.composite(white, source, mask) for source in sources]
    edits = drawing.pipe.inpaint(sources, mask, [wanted for _, wanted, _ in EDIT_PROMPTS], seed=0)
    return grid([sources, banded, edits])  # type: ignore[list-item]


def editing_outpaint(drawing: Drawing) -> Image.Image:
    elsewhere = [other for _, _, other in EDIT_PROMPTS]
    edits = drawing.pipe.outpaint(drawing.sources, OUTPAINT_SIDES, elsewhere, seed=0)
    return grid([drawing.sources, edits])  # type: ignore[list-item]


def editing_variations(drawing: Drawing) -> Image.Image:
    rows = [drawing.pipe.variations(drawing.sources, keep, list(VARIATION_PROMPTS), seed=0)
            for keep in VARIATION_KEEP_SCALES]
    return grid([drawing.sources, *rows])  # type: ignore[list-item]


def per_scale_prompts(drawing: Drawing) -> Image.Image:
    pipe = drawing.pipe
    first, second = [a for a, _ in MIX_PROMPTS], [b for _, b in MIX_PROMPTS]
    rows = [pipe(first, seed=0), pipe(second, seed=0)]
    rows += [pipe.mix(first, second, switch_scale=switch, seed=0) for switch in SWITCH_SCALES]
    return grid(rows)  # type: ignore[arg-type]


def zoom_levels(drawing: Drawing) -> Image.Image:
    return grid([[chain.levels[level] for chain in drawing.zooms] for level in range(len(ZOOM_CHAINS[0]))])


def zoom_frames(drawing: Drawing) -> Image.Image:
    frames = drawing.zooms[0].frames
    shown = [frames[round(i * (len(frames) - 1) / (ZOOM_FRAMES_SHOWN - 1))] for i in range(ZOOM_FRAMES_SHOWN)]
    return grid([shown])


FIGURES: dict[str, Callable[[Drawing], Image.Image]] = {
    "progression.png": progression,
    "editing_inpaint.png": editing_inpaint,
    "editing_outpaint.png": editing_outpaint,
    "editing_variations.png": editing_variations,
    "per_scale_prompts.png": per_scale_prompts,
    "zoom_levels.png": zoom_levels,
    "zoom_frames.png": zoom_frames,
}


def write_figures(out: Path, names: Sequence[str] = tuple(FIGURES), pipe: ImagePipeline | None = None
                  ) -> list[Path]:
    """Draw the named figures with the bundled demo model (or `pipe`) into `out`; returns the paths (a file that
    already holds the figure's pixels is left as it is)."""
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figures {unknown}; known: {list(FIGURES)}")
    drawing = Drawing(pipe or load_pipeline())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = out / name
        figure = FIGURES[name](drawing)
        if same_pixels(path, figure):  # drawn the same again: the file stays as it is (no diff to commit)
            print(f"unchanged {path}")
        else:
            figure.save(path, optimize=True)
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
        written.append(path)
    return written


def same_pixels(path: Path, figure: Image.Image) -> bool:
    """Whether `path` is a picture with exactly the figure's pixels."""
    try:
        with Image.open(path) as existing:
            return existing.size == figure.size and np.array_equal(np.asarray(existing.convert("RGB")),
                                                                   np.asarray(figure))
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Draw the README's and docs/' pictures with the bundled model.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs",
                        help="where the PNGs go (default: the repository's docs/)")
    parser.add_argument("--only", nargs="+", default=list(FIGURES), metavar="NAME", choices=list(FIGURES),
                        help="draw only these figures")
    args = parser.parse_args(argv)
    return write_figures(args.out, args.only)


if __name__ == "__main__":
    main()
