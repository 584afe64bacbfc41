"""Measured editing of a pipeline trained on the synthetic portraits: inpainting, outpainting, variations,
per-scale prompts, and (through `train.eval.zoom`) zoom stacks.

    python -m nextscale.portraits.editing                      # the bundled demo model and its judge
    python -m nextscale.portraits.editing --checkpoint runs/var/pipeline --judge runs/judge --num-edits 128
    python -m nextscale.portraits.editing --only per-scale-prompts       # one measurement

Every edit starts from real renders of known attributes and asks, through the prompt, for something
the judge can read (`train.eval.judge`):
- inpainting: portraits without glasses, the eye band regenerated from a prompt that asks for glasses;
  the kept pixels' PSNR before the final blend is set beside the tokenizer's own round trip of them;
- outpainting: each portrait shrunk into the centre, the border regenerated from a prompt naming
  another background colour;
- variations (`keep_scales` k): the prompt names only the gender and the opposite glasses; background
  and hair colour must stay the source's, glasses must follow the prompt;
- per-scale prompts: prompt A (background, hair colour, skin, and glasses/beard) and prompt B (the
  opposite of all five) switched at scale k; coarse attributes must follow A, fine ones B.
Writes `editing.json`, `editing.md` and figures (inpainting before/after, zoom strips and a GIF frame).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import tyro

from nextscale.images import from_uint8, save_grid
from nextscale.portraits.adherence import consistent_attributes
from nextscale.portraits.attributes import ATTRIBUTES
from nextscale.portraits.captions import caption_from_attributes
from nextscale.portraits.judge import AttributeJudge
from nextscale.portraits.render import render_portrait
from nextscale.portraits.zoom import ZoomEvaluation, evaluate_zoom, zoom_markdown
from nextscale.sampling.editing import EditOptions, edit, outpaint_canvas
from nextscale.sampling.mixing import mixed_conditions, switch_prompts
from nextscale.sampling.pipeline import DEMO_PIPELINE, Pipeline, load_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate, sample_scales

Measurement = Literal["inpainting", "outpainting", "variations", "per-scale-prompts", "zoom"]
MEASUREMENTS: tuple[Measurement, ...] = ("inpainting", "outpainting", "variations", "per-scale-prompts", "zoom")


@dataclass(frozen=True)
class EditEvaluationConfig:
    """Evaluate editing (inpaint, outpaint, variations, per-scale prompts) and zoom with an attribute judge."""

    checkpoint: str | None = None
    """Pipeline directory (default: the bundled demo model)."""
    judge: str | None = None
    """Judge directory (default: the judge bundled beside the demo model)."""
    out: Path = Path("outputs/editing")
    """Where editing.json, editing.md and the figures go."""
    num_edits: int = 64
    """Source portraits (= edits) per measurement."""
    cfg_scale: float = 2.0
    """Guidance strength of every edit (the demo's best single-image scale)."""
    keep_scales: tuple[int, ...] = (2, 3, 4, 5)
    """Variations: the numbers of kept scales measured."""
    switch_scales: tuple[int, ...] = (2, 3, 4, 5)
    """Per-scale prompts: the switch scales measured."""
    outpaint_sides: tuple[int, int, int, int] = (16, 16, 16, 16)
    """Outpainting: LEFT TOP RIGHT BOTTOM pixels of new canvas."""
    batch_size: int = 32
    """Edits per batch."""
    seed: int = 0
    """Seed of the sources and the edits."""
    zoom: ZoomEvaluation = ZoomEvaluation()
    """The zoom measurements."""
    only: tuple[Measurement, ...] = MEASUREMENTS
    """The measurements to run (default: all); inpainting also times plain sampling for its cost."""

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(cfg_scale=self.cfg_scale, top_k=None, top_p=1.0)


def render_sources(requested: Mapping[str, str], count: int, size: int, seed: int
                   ) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """`count` real renders satisfying `requested` (rest random): (count, 3, size, size) and their attributes."""
    images, attributes = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, 11, index])
        full = consistent_attributes(requested, rng)
        images.append(from_uint8(torch.from_numpy(render_portrait(full, size, rng)).permute(2, 0, 1)))
        attributes.append(full)
    return torch.stack(images), attributes


def eye_band(count: int, size: int) -> torch.Tensor:
    """Known pixels (count, size, size): everything but the band of the eyes and glasses (y 0.30-0.53, x 0.25-0.75)."""
    known = torch.ones(count, size, size, dtype=torch.bool)
    known[:, round(0.30 * size) : round(0.53 * size), round(0.25 * size) : round(0.75 * size)] = False
    return known


def masked_psnr(images: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """PSNR (b,) over the known pixels only: images, target (b, 3, H, W) in [-1, 1], known (b, H, W) bool."""
    weight = known.unsqueeze(1).float().expand_as(images)
    squared = (images.float().clamp(-1, 1) - target.float()).pow(2) * weight
    mse = squared.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def batched_edit(pipeline: Pipeline, images: torch.Tensor, prompts: Sequence[str], known: torch.Tensor | None,
                 config: EditEvaluationConfig, options: EditOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """`edit` in batches: (blended images, unblended images)."""
    blended, unblended = [], []
    for start in range(0, len(prompts), config.batch_size):
        stop = start + config.batch_size
        result = edit(pipeline, images[start:stop], list(prompts[start:stop]),
                      None if known is None else known[start:stop], list(range(config.seed + start, config.seed + stop))
                      [: len(prompts[start:stop])], config.sampling(), options)
        blended.append(result.images)
        unblended.append(result.unblended)
    return torch.cat(blended), torch.cat(unblended)


def rate(judge: AttributeJudge, images: torch.Tensor, name: str, wanted: Sequence[str],
         where: Sequence[bool] | None = None) -> float:
    """Fraction of images (where `where` holds) whose judged `name` is the wanted value."""
    predicted = [row[name] for row in judge.predict(images)]
    pairs = [(p, w) for i, (p, w) in enumerate(zip(predicted, wanted)) if where is None or where[i]]
    return sum(p == w for p, w in pairs) / max(len(pairs), 1)


class InpaintingTask(NamedTuple):
    """The inpainting edits: sources without glasses (n, 3, S, S), their attributes, and prompts asking
    for glasses (each source's caption with glasses)."""

    sources: torch.Tensor
    attributes: list[dict[str, str]]
    prompts: list[str]


def inpainting_task(pipeline: Pipeline, config: EditEvaluationConfig) -> InpaintingTask:
    size = pipeline.tokenizer.config.image_size
    sources, attributes = render_sources({"glasses": "no"}, config.num_edits, size, config.seed)
    return InpaintingTask(sources, attributes,
                          [caption_from_attributes({**item, "glasses": "yes"}) for item in attributes])


def evaluate_inpainting(pipeline: Pipeline, judge: AttributeJudge, config: EditEvaluationConfig,
                        task: InpaintingTask) -> dict:
    sources, attributes, prompts = task
    known = eye_band(len(prompts), pipeline.tokenizer.config.image_size)
    start = time.perf_counter()
    blended, unblended = batched_edit(pipeline, sources, prompts, known, config, EditOptions())
    seconds = time.perf_counter() - start
    round_trip = pipeline.tokenizer.decode(pipeline.tokenizer.encode(sources))
    others = [name for name in ATTRIBUTES if name != "glasses"]
    kept = {name: rate(judge, blended, name, [item[name] for item in attributes]) for name in others}
    shown = slice(0, 8)  # sources, the regenerated band in white, the edits
    save_grid([sources[shown], torch.where(known.unsqueeze(1), sources, torch.ones_like(sources))[shown],
               blended[shown]], config.out / "inpaint.png")
    return {
        "edits": len(prompts), "glasses": rate(judge, blended, "glasses", ["yes"] * len(prompts)),
        "kept_psnr_before_blend": float(masked_psnr(unblended, sources, known).mean()),
        "kept_psnr_round_trip": float(masked_psnr(round_trip, sources, known).mean()),
        "kept_psnr_after_blend": float(masked_psnr(blended, sources, known).mean()),
        "other_attributes_kept": kept, "seconds": seconds,
    }


def evaluate_outpainting(pipeline: Pipeline, judge: AttributeJudge, config: EditEvaluationConfig) -> dict:
    size = pipeline.tokenizer.config.image_size
    sources, attributes = render_sources({}, config.num_edits, size, config.seed + 1)
    backgrounds = ATTRIBUTES["background"]
    wanted = [backgrounds[(backgrounds.index(item["background"]) + 1 + index % (len(backgrounds) - 1))
                          % len(backgrounds)] for index, item in enumerate(attributes)]  # never the source's
    prompts = [caption_from_attributes({**item, "background": colour}) for item, colour in zip(attributes, wanted)]
    canvas, known = outpaint_canvas(sources, config.outpaint_sides)
    blended, unblended = batched_edit(pipeline, canvas, prompts, known, config, EditOptions())
    save_grid([canvas[:8], blended[:8]], config.out / "outpaint.png")
    return {"edits": len(prompts), "background": rate(judge, blended, "background", wanted),
            "kept_psnr_before_blend": float(masked_psnr(unblended, canvas, known).mean())}


def evaluate_variations(pipeline: Pipeline, judge: AttributeJudge, config: EditEvaluationConfig) -> list[dict]:
    size = pipeline.tokenizer.config.image_size
    sources, attributes = render_sources({}, config.num_edits, size, config.seed + 2)
    flipped = ["no" if item["glasses"] == "yes" else "yes" for item in attributes]
    prompts = [caption_from_attributes({"gender": item["gender"], "glasses": glasses})
               for item, glasses in zip(attributes, flipped)]
    rows = []
    for keep in config.keep_scales:
        images, _ = batched_edit(pipeline, sources, prompts, None, config, EditOptions(keep_scales=keep))
        rows.append({"keep_scales": keep, "edits": len(prompts),
                     "background_kept": rate(judge, images, "background", [a["background"] for a in attributes]),
                     "hair_color_kept": rate(judge, images, "hair_color", [a["hair_color"] for a in attributes]),
                     "glasses_follow_prompt": rate(judge, images, "glasses", flipped)})
        if keep == config.keep_scales[len(config.keep_scales) // 2]:
            save_grid([sources[:8], images[:8]], config.out / "variations.png")
    return rows


def opposite(attributes: Mapping[str, str], name: str, rng: np.random.Generator) -> str:
    return str(rng.choice([value for value in ATTRIBUTES[name] if value != attributes[name]]))


def evaluate_per_scale_prompts(pipeline: Pipeline, judge: AttributeJudge, config: EditEvaluationConfig) -> list[dict]:
    """Prompt A and prompt B disagree on background, hair colour, skin, glasses and (men) beard."""
    rng = np.random.default_rng([config.seed, 5])
    coarse, fine = ("background", "hair_color", "skin"), ("glasses", "beard")
    first, second = [], []
    for _ in range(config.num_edits):
        a = consistent_attributes({}, rng)
        b = {**a, **{name: opposite(a, name, rng) for name in coarse + ("glasses",)}}
        if a["gender"] == "man":
            b["beard"] = opposite(a, "beard", rng)
        first.append(a)
        second.append(b)
    keys = ("gender", *coarse, *fine)
    prompts_a = [caption_from_attributes({k: a[k] for k in keys}) for a in first]
    prompts_b = [caption_from_attributes({k: b[k] for k in keys}) for b in second]
    num_scales = pipeline.transformer.config.num_scales
    men = [a["gender"] == "man" for a in first]

    def sample(prompts_of: Callable[[str, str], list[str]], count: int) -> torch.Tensor:
        """The first `count` edits, image i conditioned per scale on prompts_of(A_i, B_i)."""
        images = []
        for start in range(0, count, config.batch_size):
            stop = min(start + config.batch_size, count)
            per_image = [prompts_of(a, b) for a, b in zip(prompts_a[start:stop], prompts_b[start:stop])]
            conditions = mixed_conditions(pipeline, [list(row) for row in zip(*per_image)], config.sampling())
            loop = sample_scales(pipeline, conditions, list(range(start, stop)), config.sampling())
            with torch.inference_mode():
                images.append(pipeline.tokenizer.decode_latent(loop.accumulated).float())
        return torch.cat(images)

    shown = min(8, config.num_edits)
    figure = [sample(lambda a, b: [a] * num_scales, shown), sample(lambda a, b: [b] * num_scales, shown)]
    rows = []
    for switch in config.switch_scales:
        batch = sample(partial(switch_prompts, switch_scale=switch, num_scales=num_scales), config.num_edits)
        figure.append(batch[:shown])
        row = {"switch_scale": switch, "edits": config.num_edits}
        row |= {f"{name}_follows_a": rate(judge, batch, name, [a[name] for a in first]) for name in coarse}
        row["glasses_follows_b"] = rate(judge, batch, "glasses", [b["glasses"] for b in second])
        row["beard_follows_b"] = rate(judge, batch, "beard", [b["beard"] for b in second], men)
        rows.append(row)
    # rows: prompt A alone, prompt B alone, then A switched to B at each measured scale
    save_grid(figure, config.out / "per_scale_prompts.png")
    return rows


def normal_sample_seconds(pipeline: Pipeline, prompts: Sequence[str], config: EditEvaluationConfig) -> float:
    """Wall time of sampling the edits' prompts as plain images, with the same batches and seeds (the
    edits' yardstick)."""
    start = time.perf_counter()
    for begin in range(0, len(prompts), config.batch_size):
        generate(pipeline, prompts[begin : begin + config.batch_size], config.seed + begin, config.sampling())
    return time.perf_counter() - start


def evaluate(config: EditEvaluationConfig) -> dict:
    """Run every measurement; write editing.json, editing.md and the figures."""
    pipeline = load_pipeline(config.checkpoint)
    judge_path = config.judge or str((Path(config.checkpoint) if config.checkpoint else DEMO_PIPELINE) / "judge")
    judge = AttributeJudge.from_pretrained(judge_path)
    config.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": json.loads(json.dumps(asdict(config), default=str))}
    if "inpainting" in config.only:
        task = inpainting_task(pipeline, config)
        report["inpainting"] = evaluate_inpainting(pipeline, judge, config, task)
        report["plain_sampling_seconds"] = normal_sample_seconds(pipeline, task.prompts, config)
    if "outpainting" in config.only:
        report["outpainting"] = evaluate_outpainting(pipeline, judge, config)
    if "variations" in config.only:
        report["variations"] = evaluate_variations(pipeline, judge, config)
    if "per-scale-prompts" in config.only:
        report["per_scale_prompts"] = evaluate_per_scale_prompts(pipeline, judge, config)
    if "zoom" in config.only:
        report["zoom"] = evaluate_zoom(pipeline, judge, config.zoom, config.out, config.sampling())
    (config.out / "editing.json").write_text(json.dumps(report, indent=2) + "\n")
    (config.out / "editing.md").write_text(markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """The measurements in the report as markdown (for its experiment page)."""
    lines = ["| measurement | edits | result |", "|---|---|---|"]
    inpaint = report.get("inpainting")
    if inpaint is not None:
        lines += [
            f"| inpainting the eye band, prompt asks for glasses | {inpaint['edits']} | "
            f"glasses {inpaint['glasses']:.2f} |",
            f"| kept pixels of those edits, PSNR before the blend | {inpaint['edits']} | "
            f"{inpaint['kept_psnr_before_blend']:.2f} dB (tokenizer round trip of the same pixels "
            f"{inpaint['kept_psnr_round_trip']:.2f} dB; after the blend {inpaint['kept_psnr_after_blend']:.1f} dB) |",
        ]
    if "outpainting" in report:
        outpaint = report["outpainting"]
        lines.append(f"| outpainting the border, prompt names another background | {outpaint['edits']} | "
                     f"background {outpaint['background']:.2f} |")
    for row in report.get("variations", []):
        lines.append(f"| variations, keep {row['keep_scales']} scales, prompt flips glasses | {row['edits']} | "
                     f"background kept {row['background_kept']:.2f}, hair colour kept {row['hair_color_kept']:.2f}, "
                     f"glasses follow the prompt {row['glasses_follow_prompt']:.2f} |")
    for row in report.get("per_scale_prompts", []):
        lines.append(f"| per-scale prompts, switch at scale {row['switch_scale']} | {row['edits']} | "
                     f"A: background {row['background_follows_a']:.2f}, hair colour {row['hair_color_follows_a']:.2f}, "
                     f"skin {row['skin_follows_a']:.2f}; B: glasses {row['glasses_follows_b']:.2f}, beard (men) "
                     f"{row['beard_follows_b']:.2f} |")
    if inpaint is not None:
        ratio = inpaint["seconds"] / report["plain_sampling_seconds"]
        lines += ["", f"Inpainting {inpaint['edits']} images took {inpaint['seconds']:.1f} s against "
                  f"{report['plain_sampling_seconds']:.1f} s for plain samples of the same prompts and seeds "
                  f"({ratio:.2f}x)."]
    text = "\n".join(lines) + "\n"
    return text + "\n" + zoom_markdown(report["zoom"]) if "zoom" in report else text


if __name__ == "__main__":
    result = evaluate(tyro.cli(EditEvaluationConfig))
    print(markdown_report(result))
