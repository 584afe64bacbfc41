"""Measured zoom stacks: per-level prompt adherence, low-frequency agreement between levels, seams.

For every zoom factor, `chains` stacks start from random attribute sets; level i's prompt describes
what is visible at its magnification. Reported per factor:
- low-frequency agreement: PSNR of each child downsampled by the factor vs its parent's centre, before
  any blending (and after it), beside the tokenizer's round trip of the upsampled centre crops and the
  world's own agreement: the same portrait rendered at both magnifications, the wider view through the
  tokenizer (as a generated parent is a decoded image), the deeper view shrunk against its centre. That
  is what a child that is exactly right scores against a decoded parent;
- seams: the mean gradient magnitude on the border of the parent's centre box over the mean elsewhere,
  after blending, beside the same ratio of the unblended parent (what the content alone gives) and of
  a naive paste of the downsampled child;
- adherence of every level to its own prompt, read by any judge on a per-level list of attribute names
  (`level_attributes`: the attributes visible at 1x, 2x, 4x); a judge trained on every zoom level reads
  them all, a judge trained on 1x portraits only is out of its domain beyond level 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nextscale.images import from_uint8, psnr, save_grid
from nextscale.portraits.adherence import consistent_attributes
from nextscale.portraits.attributes import visible_attributes
from nextscale.portraits.captions import caption_from_attributes
from nextscale.portraits.judge import AttributeJudge
from nextscale.portraits.render import render_portrait
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig
from nextscale.sampling.zoom import (
    ZoomOptions,
    centre,
    enlarge,
    paste_centre,
    seam_gradient_ratio,
    shrink,
    zoom,
)
from nextscale.sampling.zoom_video import save_zoom, zoom_frames
from nextscale.tokenizer import MultiScaleVQVAE

LEVEL_PROMPTS = {1: "{}", 2: "a close-up of the face of {}", 4: "an extreme close-up of the eyes of {}"}


@dataclass(frozen=True)
class ZoomEvaluation:
    """Which zoom stacks to measure."""

    factors: tuple[int, ...] = (2, 4)
    """Zoom factors measured (zoom in)."""
    chains: int = 16
    """Stacks per factor."""
    max_zoom: int = 4
    """Deepest magnification (levels 1x, f x, ... up to this)."""
    zoom_out: bool = True
    """Also measure a zoom out at factor 2."""
    level_attributes: tuple[tuple[str, ...], ...] = tuple(visible_attributes(level) for level in (1, 2, 4))
    """Attributes named and judged at 1x, 2x and 4x: those the zoom world shows at that magnification
    (`visible_attributes`, what its captions name and the zoom judge was validated on)."""
    seed: int = 100
    """Seed of the attribute sets and the stacks."""


def level_prompt(attributes: Mapping[str, str], magnification: int, names: Sequence[str]) -> str:
    """The prompt of a level: the visible attributes in the level's wording (1x, 2x close-up, 4x extreme)."""
    caption = caption_from_attributes({name: attributes[name] for name in names if name in attributes})
    return LEVEL_PROMPTS[magnification].format(caption)


def zoom_adherence(judge: AttributeJudge, levels: Sequence[torch.Tensor], attributes: Sequence[Mapping[str, str]],
                   names_per_level: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """Per level, the fraction of chains whose judged value equals the asked one, for that level's names.

    levels: per level (chains, 3, H, W); attributes: one dict per chain; names_per_level: the attributes
    judged at each level (e.g. `visible_attributes(level)` of the data, or any list).
    """
    scores = []
    for images, names in zip(levels, names_per_level):
        judged = judge.predict(images)
        scores.append({name: float(np.mean([row[name] == item[name] for row, item in zip(judged, attributes)]))
                       for name in names})
    return scores


def magnifications(factor: int, max_zoom: int) -> list[int]:
    levels, zoom_level = [], 1
    while zoom_level <= max_zoom:
        levels.append(zoom_level)
        zoom_level *= factor
    return levels


def render_level(attributes: Mapping[str, str], size: int, seed: Sequence[int], magnification: int) -> torch.Tensor:
    """One portrait rendered natively at `magnification`: (3, size, size) in [-1, 1]; the same `seed` gives
    the same portrait at every magnification."""
    pixels = render_portrait(attributes, size, np.random.default_rng(list(seed)), magnification)
    return from_uint8(torch.from_numpy(pixels).permute(2, 0, 1))


@torch.no_grad()
def rendered_agreement(tokenizer: MultiScaleVQVAE, attributes: Sequence[Mapping[str, str]],
                       magnifications: Sequence[int], factor: int, seed: int) -> list[float]:
    """Per consecutive pair of magnifications, the mean PSNR of the deeper native render shrunk by `factor`
    against the centre of the wider render's tokenizer round trip (each chain one portrait)."""
    size = tokenizer.config.image_size
    views = [torch.stack([render_level(item, size, (seed, chain), m) for chain, item in enumerate(attributes)])
             for m in magnifications]
    return [float(psnr(shrink(child, factor), centre(tokenizer.decode(tokenizer.encode(parent)).clamp(-1, 1),
                                                      factor)).mean())
            for parent, child in zip(views, views[1:])]


def evaluate_zoom(pipeline: Pipeline, judge: AttributeJudge, config: ZoomEvaluation, out: Path,
                  sampling: SamplingConfig) -> list[dict]:
    """Run the zoom measurements; writes zoom strips, a GIF and a GIF frame under `out`."""
    rng = np.random.default_rng([config.seed])
    attributes = [consistent_attributes({}, rng) for _ in range(config.chains)]
    by_zoom = dict(zip((1, 2, 4), config.level_attributes))
    runs = [(factor, False) for factor in config.factors] + ([(2, True)] if config.zoom_out else [])
    rows = []
    for factor, zoom_out in runs:
        zooms = magnifications(factor, config.max_zoom)
        names = [by_zoom.get(level, ()) for level in zooms]
        levels = []
        for chain, item in enumerate(attributes):
            prompts = [level_prompt(item, level, by_zoom.get(level, tuple(item))) for level in zooms]
            ordered = prompts[::-1] if zoom_out else prompts  # a zoom out starts from the deepest view
            result = zoom(pipeline, ordered, config.seed + chain, sampling, ZoomOptions(factor=factor,
                                                                                          zoom_out=zoom_out))
            levels.append(result)
        raw = [torch.cat([r.raw[i] for r in levels]) for i in range(len(zooms))]
        blended = [torch.cat([r.levels[i] for r in levels]) for i in range(len(zooms))]
        crop_round_trip = []
        if not zoom_out:
            for parent in raw[:-1]:
                crop = enlarge(centre(parent, factor), parent.shape[-1])
                decoded = pipeline.tokenizer.decode(pipeline.tokenizer.encode(crop))
                crop_round_trip.append(float(psnr(decoded, crop).mean()))
        row = {
            "factor": factor, "zoom_out": zoom_out, "chains": config.chains, "magnifications": zooms,
            "agreement_before_blend": [float(torch.cat([r.agreement_psnr()[i] for r in levels]).mean())
                                       for i in range(len(zooms) - 1)],
            "agreement_after_blend": [float(torch.cat([r.agreement_psnr(True)[i] for r in levels]).mean())
                                      for i in range(len(zooms) - 1)],
            "crop_round_trip_psnr": crop_round_trip,
            "rendered_agreement": [] if zoom_out else rendered_agreement(pipeline.tokenizer, attributes, zooms,
                                                                         factor, config.seed),
            "seam_ratio_blended": [float(seam_gradient_ratio(p, factor).mean()) for p in blended[:-1]],
            "seam_ratio_unblended_parent": [float(seam_gradient_ratio(p, factor).mean()) for p in raw[:-1]],
            "seam_ratio_naive_paste": [float(seam_gradient_ratio(paste_centre(p, c, factor), factor).mean())
                                       for p, c in zip(raw, raw[1:])],
            "adherence": zoom_adherence(judge, blended, attributes, names),
        }
        rows.append(row)
        stem = f"zoom-x{factor}{'-out' if zoom_out else ''}"
        save_grid([level[:4] for level in blended], out / f"{stem}-levels.png")
        save_zoom([level[:1] for level in blended], levels[0].prompts, factor, out / stem, zoom_out=zoom_out,
                  frames_per_level=8, frame_size=128, stem=stem)
        frames = zoom_frames([level[:1] for level in blended], factor, frames_per_level=4, frame_size=128)
        shown = [frames[round(i * (len(frames) - 1) / 6)] for i in range(7)]
        save_grid(torch.cat(shown), out / f"{stem}-frames.png", columns=len(shown))
    return rows


def zoom_markdown(rows: Sequence[dict]) -> str:
    """The zoom measurements as a markdown table (for its experiment page)."""
    lines = ["| zoom | levels | agreement before blend (dB) | the world's own child vs a decoded parent (dB) | "
             "tokenizer round trip of the crops (dB) | after blend (dB) | seam ratio after blend | unblended parent | "
             "naive paste | adherence per level (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def numbers(values: Sequence[float], digits: int = 1) -> str:
        return ", ".join(f"{value:.{digits}f}" for value in values) or "-"

    for row in rows:
        name = f"{'out' if row['zoom_out'] else 'in'} x{row['factor']}"
        levels = "/".join(f"{m}x" for m in row["magnifications"])
        adherence = ", ".join(f"{np.mean(list(level.values())):.2f}" if level else "-" for level in row["adherence"])
        lines.append(f"| {name} | {levels} | {numbers(row['agreement_before_blend'])} | "
                     f"{numbers(row.get('rendered_agreement', []))} | {numbers(row['crop_round_trip_psnr'])} | "
                     f"{numbers(row['agreement_after_blend'])} | "
                     f"{numbers(row['seam_ratio_blended'], 2)} | {numbers(row['seam_ratio_unblended_parent'], 2)} | "
                     f"{numbers(row['seam_ratio_naive_paste'], 2)} | {adherence} |")
    return "\n".join(lines) + "\n"
