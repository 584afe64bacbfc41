"""Measured prompt adherence, fidelity and diversity of a pipeline trained on the synthetic portraits.

    python -m nextscale.portraits.adherence                               # the bundled demo model and its judge
    python -m nextscale.portraits.adherence --checkpoint runs/var/pipeline --judge runs/judge --images-per-prompt 32

A judge (`train.judge`, an attribute classifier validated on held-out renders) reads the attributes of
generated images. For a fixed prompt set (every single attribute value, and fixed 3-attribute
combinations) it reports, for each guidance scale of a sweep:
- per-attribute adherence (fraction of images whose judged value is the prompted one) and the rate of
  3-attribute prompts with all three right, beside two baselines: real renders of the same prompts
  (the upper bound: the judge's own error), the tokenizer's reconstructions of real renders (what its
  round trip alone costs) and unconditional samples (chance);
- the Fréchet distance between judge features of generated and real images, beside real-vs-real and
  reconstructions-vs-real, and the sample's own noise in it (its standard deviation over bootstrap
  resamples of the generated images: FDs closer than about twice that are not told apart);
- diversity: mean pairwise RMS pixel distance between images of the same prompt (real: same measure);
- the chosen guidance scale (`choose_cfg_row`): the best single-attribute adherence, where rows within
  the sample's noise of it count as tied and the lowest FD among them wins;
- with `--zoom-levels 2 4`, per zoom level at the chosen guidance scale: adherence to a prompt per
  visible attribute value at that level ("a close-up of the face of a man with glasses"), beside real
  renders of the level.
Writes `evaluation.json`, `evaluation.md` and `progression.png` (coarse-to-fine for four prompts).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from nextscale.eval.fid import frechet_distance, frechet_distance_noise
from nextscale.images import from_uint8, save_grid, to_uint8
from nextscale.portraits.attributes import ATTRIBUTES, sample_attributes, visible_attributes
from nextscale.portraits.captions import caption_from_attributes
from nextscale.portraits.judge import AttributeJudge, attribute_indices, reconstruct
from nextscale.portraits.render import render_portrait
from nextscale.sampling.pipeline import DEMO_PIPELINE, Pipeline, load_pipeline, record_sampling
from nextscale.sampling.precision import DTYPES, apply_precision
from nextscale.sampling.sampler import SamplingConfig, generate

PROGRESSION_PROMPTS = (
    "a man with a beard and glasses on a blue background",
    "a smiling woman with long red hair",
    "a man with short grey hair and dark skin on a yellow background",
    "a woman with blond hair and glasses on a green background",
)


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluate prompt adherence, fidelity and diversity of a pipeline with an attribute judge."""

    checkpoint: str | None = None
    """Pipeline directory (default: the bundled demo model)."""
    judge: str | None = None
    """Judge directory (default: the judge bundled beside the demo model)."""
    zoom_judge: str | None = None
    """Judge of the per-level adherence (default: `judge`), e.g. a zoom judge beside a 1x judge whose
    features keep the Fréchet distances comparable with earlier runs."""
    out: Path = Path("outputs/evaluation")
    """Where evaluation.json, evaluation.md and progression.png go."""
    images_per_prompt: int = 16
    """Generated (and real) images per prompt."""
    num_triples: int = 12
    """How many fixed 3-attribute prompts."""
    cfg_scales: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0)
    """Guidance scales of the sweep."""
    top_k: int | None = None
    """Top-k of sampling (None: all codes)."""
    top_p: float = 1.0
    """Top-p of sampling (1: all codes)."""
    temperature: float = 1.0
    """Sampling temperature."""
    batch_size: int = 64
    """Images per sampling batch."""
    seed: int = 0
    """Seed of generated images, real renders and the 3-attribute prompt set."""
    progression: bool = True
    """Also save the coarse-to-fine progression of four prompts."""
    record: bool = False
    """Store the chosen guidance scale (`choose_cfg_row`), with this run's top-k and top-p, in the pipeline's
    pipeline.json: `sample.py` then uses them unless told otherwise."""
    zoom_levels: tuple[int, ...] = ()
    """Zoom levels (2, 4) whose per-level adherence is measured at the chosen guidance scale (1x is the main
    table); needs a judge trained on those levels (`--zoom-judge`); () skips it."""
    guidance_off_last: int = 0
    """Switch guidance off for the last N scales (the guidance window measured for adherence and FD)."""
    dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    """Weights and activations dtype of the sampled pipeline (the judge stays float32); int8: the transformer's
    linear layers in int8 on the CPU (`nextscale.sampling.precision`)."""
    decoder_dtype: Literal["float32", "bfloat16"] | None = None
    """The decoder's dtype while sampling (None: the pipeline's); the baselines decode in float32."""

    def sampling(self, cfg_scale: float) -> SamplingConfig:
        return SamplingConfig(cfg_scale=cfg_scale, guidance_off_last=self.guidance_off_last, top_k=self.top_k,
                              top_p=self.top_p, temperature=self.temperature)


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and the attributes it asks for."""

    text: str
    attributes: Mapping[str, str] = field(default_factory=dict)


def level_prompt_set(level: int) -> list[PromptSpec]:
    """One prompt per value of every attribute visible at zoom `level`, worded for that level."""
    return [PromptSpec(caption_from_attributes({name: value}, level=level), {name: value})
            for name in visible_attributes(level) for value in ATTRIBUTES[name]]


def prompt_set(num_triples: int, seed: int) -> tuple[list[PromptSpec], list[PromptSpec]]:
    """Single-attribute prompts (every value of every attribute) and fixed 3-attribute prompts."""
    singles = [PromptSpec(caption_from_attributes({name: value}), {name: value})
               for name, values in ATTRIBUTES.items() for value in values]
    rng = np.random.default_rng([seed, 3])
    names = [name for name in ATTRIBUTES if name != "gender"]
    triples, seen = [], set()
    while len(triples) < num_triples:
        full = sample_attributes(rng)
        chosen = ["gender", *rng.choice(names, size=2, replace=False)]
        attributes = {name: full[name] for name in chosen}
        key = tuple(sorted(attributes.items()))
        if key not in seen:
            seen.add(key)
            triples.append(PromptSpec(caption_from_attributes(attributes), attributes))
    return singles, triples


def consistent_attributes(requested: Mapping[str, str], rng: np.random.Generator) -> dict[str, str]:
    """A full attribute set that satisfies `requested` (beards only on men), the rest random."""
    for _ in range(1000):
        full = {**sample_attributes(rng), **requested}
        if full["gender"] == "man" or full["beard"] == "no":
            return full
    raise ValueError(f"no portrait satisfies {dict(requested)}")


def render_real(specs: Sequence[PromptSpec], per_prompt: int, size: int, seed: int, zoom: int = 1) -> torch.Tensor:
    """Real renders satisfying each prompt, seen at `zoom`: (len(specs) * per_prompt, 3, size, size) in [-1, 1]."""
    images = []
    for index, spec in enumerate(specs):
        for item in range(per_prompt):
            rng = np.random.default_rng([seed, index, item])
            pixels = render_portrait(consistent_attributes(spec.attributes, rng), size, rng, zoom)
            images.append(from_uint8(torch.from_numpy(pixels).permute(2, 0, 1)))
    return torch.stack(images)


def sample_prompts(pipeline: Pipeline, prompts: Sequence[str], config: EvaluationConfig, cfg_scale: float,
                   seed: int) -> torch.Tensor:
    """Generate one image per entry of `prompts` (seeds seed, seed + 1, ...), in batches."""
    out = []
    for start in range(0, len(prompts), config.batch_size):
        chunk = list(prompts[start : start + config.batch_size])
        seeds = list(range(seed + start, seed + start + len(chunk)))
        out.append(generate(pipeline, chunk, seeds, config.sampling(cfg_scale)).images)
    return torch.cat(out)


@torch.no_grad()
def judge_images(judge: AttributeJudge, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted value indices (n, A) and features (n, D) of images (n, 3, H, W)."""
    size = judge.config.image_size
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
    chunks = [(judge.predict_indices(c), judge.features(c)) for c in images.split(256)]
    return torch.cat([p for p, _ in chunks]), torch.cat([f for _, f in chunks])


def adherence(predicted: torch.Tensor, specs: Sequence[PromptSpec], per_prompt: int,
              judge: AttributeJudge) -> dict:
    """Per-attribute accuracy over the prompts that ask for it, and the all-attributes-correct rate."""
    targets = attribute_indices([spec.attributes for spec in specs], judge.config)  # (p, A), -1 = not asked
    targets = targets.repeat_interleave(per_prompt, dim=0)  # (p * per_prompt, A)
    asked = targets >= 0
    hits = (predicted == targets) & asked
    per_attribute = {name: float(hits[:, a].sum() / asked[:, a].sum())
                     for a, name in enumerate(judge.config.attribute_names) if asked[:, a].any()}
    all_correct = float((hits | ~asked).all(dim=1).float().mean())
    return {"per_attribute": per_attribute, "mean": statistics.fmean(per_attribute.values()),
            "all_correct": all_correct}


def choose_cfg_row(sweep: Sequence[dict], images: int) -> tuple[dict, list[dict]]:
    """The guidance row to recommend, and the rows tied with the best.

    A row ties with the best single-attribute adherence when their difference is within one standard
    error of a difference of two rates over `images` judged images each (binomial:
    sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n); the mean over attributes is taken as one rate). Adherence
    differences that small are the sample's noise (one image of 384 is 0.0026), so among tied rows the
    one with the lowest Fréchet distance is chosen; ties in FD keep the sweep's order."""
    if not sweep or images < 1:
        raise ValueError("choose_cfg_row needs at least one sweep row and one judged image")
    best = max(sweep, key=lambda row: row["single"]["mean"])
    top = best["single"]["mean"]

    def noise(rate: float) -> float:
        return rate * (1.0 - rate) / images

    tied = [row for row in sweep
            if top - row["single"]["mean"] <= math.sqrt(noise(top) + noise(row["single"]["mean"]))]
    return min(tied, key=lambda row: row["frechet_distance"]), tied


def cfg_list(scales: Iterable[float]) -> str:
    """Guidance scales as "2/4/6"."""
    return "/".join(f"{scale:g}" for scale in scales)


def diversity(images: torch.Tensor, per_prompt: int) -> float:
    """Mean pairwise RMS pixel distance between images of the same prompt (images grouped by prompt)."""
    groups = images.flatten(1).split(per_prompt)
    distances = []
    for group in groups:
        pairwise = torch.cdist(group, group) / group.shape[1] ** 0.5  # (n, n) RMS distances
        n = group.shape[0]
        distances.append(float(pairwise.sum() / (n * (n - 1))))
    return statistics.fmean(distances)


def seconds_per_image(pipeline: Pipeline, cfg_scale: float, repeats: int = 5) -> float:
    """Median wall time of sampling one image (batch 1) with guidance."""
    times = []
    for seed in range(repeats + 1):
        start = time.perf_counter()
        generate(pipeline, ["a man with a beard"], seed, SamplingConfig(cfg_scale=cfg_scale))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first call warms up


def evaluate(config: EvaluationConfig) -> dict:
    """Run the whole evaluation; write the JSON, the markdown table and the progression figure."""
    pipeline = load_pipeline(config.checkpoint)
    judge_path = config.judge or str((Path(config.checkpoint) if config.checkpoint else DEMO_PIPELINE) / "judge")
    judge = AttributeJudge.from_pretrained(judge_path)
    size = pipeline.tokenizer.config.image_size
    per = config.images_per_prompt
    singles, triples = prompt_set(config.num_triples, config.seed)
    specs = singles + triples
    prompts = [spec.text for spec in specs for _ in range(per)]

    real = render_real(specs, per, size, config.seed + 1)
    real_again = render_real(specs, per, size, config.seed + 2)
    real_pred, real_features = judge_images(judge, real)
    _, real_again_features = judge_images(judge, real_again)
    # what the tokenizer's round trip alone costs: real renders encoded and decoded
    reconstructed = from_uint8(reconstruct(pipeline.tokenizer, to_uint8(real_again)))
    reconstructed_pred, reconstructed_features = judge_images(judge, reconstructed)
    # the baselines above use the float32 tokenizer; sampling runs in the dtype asked for
    apply_precision(pipeline.tokenizer, pipeline.transformer, DTYPES[config.dtype], config.decoder_dtype)
    unconditional = sample_prompts(pipeline, [""] * len(prompts), config, 0.0, config.seed)
    uncond_pred, _ = judge_images(judge, unconditional)

    def score(predicted: torch.Tensor) -> dict:
        n_single = len(singles) * per
        return {"single": adherence(predicted[:n_single], singles, per, judge),
                "triple": adherence(predicted[n_single:], triples, per, judge)}

    report: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "prompts": {"single": [s.text for s in singles], "triple": [s.text for s in triples]},
        "real": {**score(real_pred), "diversity": diversity(real, per),
                 "frechet_distance_real_vs_real": frechet_distance(real_features, real_again_features)},
        "reconstructions": {**score(reconstructed_pred), "diversity": diversity(reconstructed, per),
                            "frechet_distance": frechet_distance(reconstructed_features, real_features)},
        "unconditional": score(uncond_pred),
        "sweep": [],
    }
    for cfg_scale in tqdm(config.cfg_scales, desc="guidance sweep"):
        images = sample_prompts(pipeline, prompts, config, cfg_scale, config.seed)
        predicted, features = judge_images(judge, images)
        report["sweep"].append({"cfg_scale": cfg_scale, **score(predicted), "diversity": diversity(images, per),
                                "frechet_distance": frechet_distance(features, real_features),
                                "frechet_distance_noise": frechet_distance_noise(features, real_features, per,
                                                                                 seed=config.seed)})
    best, tied = choose_cfg_row(report["sweep"], len(singles) * per)
    report["best_cfg_scale"] = best["cfg_scale"]
    report["tied_cfg_scales"] = [row["cfg_scale"] for row in tied]
    zoom_judge = AttributeJudge.from_pretrained(config.zoom_judge) if config.zoom_judge else judge
    report["zoom"] = {str(level): zoom_adherence(pipeline, zoom_judge, level, best["cfg_scale"], config)
                      for level in config.zoom_levels}
    report["seconds_per_image"] = seconds_per_image(pipeline, best["cfg_scale"])
    if config.record and pipeline.directory is not None:
        sweep = cfg_list(row["cfg_scale"] for row in report["sweep"])
        report["recorded"] = record_sampling(
            pipeline.directory, best["cfg_scale"], config.top_k, config.top_p,
            f"prompt-adherence evaluation over cfg {sweep} (its report: {config.out / 'evaluation.md'}): cfg "
            f"{best['cfg_scale']:g} chosen" + (", the lowest FD of the cfgs tied within the sample's noise"
                                                 if len(tied) > 1 else ", the best adherence"))

    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    (config.out / "evaluation.md").write_text(markdown_report(report))
    if config.progression:
        save_progression_figure(pipeline, config.out / "progression.png", best["cfg_scale"], config)
    return report


def zoom_adherence(pipeline: Pipeline, judge: AttributeJudge, level: int, cfg_scale: float,
                   config: EvaluationConfig) -> dict:
    """Adherence at one zoom level: generated images of `level_prompt_set(level)` and real renders of the
    level, each judged on the one attribute its prompt names."""
    specs, per = level_prompt_set(level), config.images_per_prompt
    size = pipeline.tokenizer.config.image_size
    real, _ = judge_images(judge, render_real(specs, per, size, config.seed + 1, level))
    images = sample_prompts(pipeline, [spec.text for spec in specs for _ in range(per)], config, cfg_scale,
                            config.seed)
    generated, _ = judge_images(judge, images)
    return {"cfg_scale": cfg_scale, "prompts": [spec.text for spec in specs],
            "real": adherence(real, specs, per, judge), "generated": adherence(generated, specs, per, judge)}


def save_progression_figure(pipeline: Pipeline, path: Path, cfg_scale: float, config: EvaluationConfig) -> None:
    """One row per prompt: the decoded image after each scale, nearest-upsampled to full size."""
    result = generate(pipeline, list(PROGRESSION_PROMPTS), config.seed, config.sampling(cfg_scale),
                      return_progression=True)
    assert result.progression is not None
    rows = torch.stack(result.progression, dim=1)  # (prompts, scales, 3, H, W)
    save_grid(rows.flatten(0, 1), path, columns=rows.shape[1])


def markdown_report(report: dict) -> str:
    """The evaluation as markdown tables (for its experiment page)."""
    names = list(report["real"]["single"]["per_attribute"])
    header = "| | " + " | ".join(names) + " | mean | 3-attr all correct | FD | diversity |"
    lines = [header, "|" + "---|" * (len(names) + 5)]

    def row(label: str, scores: dict, fd: str, div: str) -> str:
        cells = [f"{scores['single']['per_attribute'][n]:.2f}" for n in names]
        return (f"| {label} | " + " | ".join(cells) + f" | {scores['single']['mean']:.3f} | "
                f"{scores['triple']['all_correct']:.3f} | {fd} | {div} |")

    real = report["real"]
    lines.append(row("real renders", real, f"{real['frechet_distance_real_vs_real']:.2f} (real vs real)",
                     f"{real['diversity']:.3f}"))
    rec = report["reconstructions"]
    lines.append(row("tokenizer reconstructions", rec, f"{rec['frechet_distance']:.2f}", f"{rec['diversity']:.3f}"))
    lines.append(row("unconditional", report["unconditional"], "", ""))
    for entry in report["sweep"]:
        noise = entry.get("frechet_distance_noise", 0.0)
        spread = f" ± {noise:.0f}" if noise else ""
        lines.append(row(f"cfg {entry['cfg_scale']:g}", entry, f"{entry['frechet_distance']:.2f}{spread}",
                         f"{entry['diversity']:.3f}"))
    lines.append("")
    if any(entry.get("frechet_distance_noise") for entry in report["sweep"]):
        lines.append("FD ± the standard deviation of the FD over 20 bootstrap resamples of the generated images "
                     "(each prompt's own): the sample's noise; runs whose FDs differ by less than about twice "
                     "that are not told apart by this sample.")
        lines.append("")
    tied = report.get("tied_cfg_scales", [report["best_cfg_scale"]])
    chosen = (f"Chosen guidance scale: {report['best_cfg_scale']:g}"
              + (f" (adherence tied within the sample's noise at cfg {cfg_list(tied)}; the lowest FD)"
                 if len(tied) > 1 else " (the best adherence)"))
    lines.append(f"{chosen}; sampling one image (batch 1, guided): "
                 f"{report['seconds_per_image'] * 1000:.0f} ms.")
    for level, entry in report.get("zoom", {}).items():
        level_names = list(entry["real"]["per_attribute"])
        lines += ["", f"Zoom {level}x (one prompt per visible attribute value, cfg {entry['cfg_scale']:g}):", "",
                  "| | " + " | ".join(level_names) + " | mean |", "|" + "---|" * (len(level_names) + 2)]
        for label, key in (("real renders", "real"), ("generated", "generated")):
            cells = [f"{entry[key]['per_attribute'][n]:.2f}" for n in level_names]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry[key]['mean']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = evaluate(tyro.cli(EvaluationConfig))
    print(markdown_report(result))
