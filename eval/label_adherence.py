"""Prompt adherence on your own labelled data: how often samples of a class's prompt show that class, beside
how often held-out real images of it do, on one label judge (`nextscale.eval.label_judge`).

    python -m nextscale.eval.label_adherence --pipeline runs/my32/var/pipeline --judge judge/ --images-per-class 16

For every class, `--images-per-class` samples are drawn from its prompts (`nextscale.eval.labels.class_prompts`:
a class folder's class name, the caption it trains on, or the captions of the class's held-out images in
turn; a class-conditional pipeline gets the class label) with sample.py's settings (the pipeline's
recommended ones unless --cfg, --top-k, --top-p say otherwise), and the judge reads them. Beside them:
the judge on the held-out real images (its own error: the ceiling) and on their reconstructions by the
pipeline's tokenizer (what the tokenizer's round trip alone costs). The gap between samples and real
images is how far the samples are from real images on that judge. The Fréchet distance between judge
features of the samples (and of the reconstructions) and of the held-out images adds how far their
spread is. Writes `--out`/label_adherence.json and prints one table.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nextscale.data import DataConfig
from nextscale.errors import run_cli
from nextscale.eval.fid import frechet_distance
from nextscale.eval.label_judge import LabelJudge, accuracy, held_out_images
from nextscale.eval.labels import class_prompts, labelled_split
from nextscale.sampling.cli import SampleArgs, settings_note
from nextscale.sampling.pipeline import Pipeline, load_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate


@dataclass(frozen=True)
class LabelAdherenceConfig:
    """Score a pipeline's samples with a label judge against held-out real images of the same data."""

    pipeline: str
    """A pipeline directory (train_var.py's output_dir/pipeline)."""
    judge: str
    """The label judge's output directory (holds model/ and data.json), or its model/ directory with a
    data.json beside it."""
    images_per_class: int = 16
    """Samples per class."""
    out: Path = Path("outputs/label_adherence")
    """Where label_adherence.json goes."""
    cfg: float | None = None
    """Guidance strength (default: the pipeline's recommended setting, as in sample.py)."""
    top_k: int | None = None
    """Top-k (default: the pipeline's recommended setting, as in sample.py)."""
    top_p: float | None = None
    """Top-p (default: the pipeline's recommended setting, as in sample.py)."""
    eval_images: int = 4096
    """Held-out real images judged (and reconstructed), at most."""
    batch_size: int = 64
    """Images per sampling batch."""
    seed: int = 0
    """Seed of the first sample (each sample its own seed, as in sample.py)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the pipeline and the judge run."""

    def __post_init__(self) -> None:
        if self.images_per_class < 1 or self.batch_size < 1 or self.eval_images < 1:
            raise ValueError("--images-per-class, --batch-size and --eval-images must be >= 1")


def judge_directories(judge: str) -> tuple[Path, Path]:
    """(the judge's model directory, its data.json) from the judge's output directory or its model/."""
    root = Path(judge)
    model = root / "model" if (root / "model").is_dir() else root
    data = next((candidate for candidate in (root / "data.json", model.parent / "data.json") if candidate.is_file()),
                None)
    if data is None:
        raise FileNotFoundError(f"{judge} has no data.json: pass the output directory of "
                                "python -m nextscale.eval.label_judge")
    return model, data


def sample_classes(pipeline: Pipeline, prompts: list[list[str]], config: LabelAdherenceConfig,
                   sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (n, 3, H, W) of every class's prompts (class labels for a class-conditional pipeline) and
    their classes (n,), seeds config.seed, config.seed + 1, ..."""
    by_label = pipeline.text_encoder is None
    jobs = [(label if by_label else prompt, label) for label, texts in enumerate(prompts) for prompt in texts]
    images = []
    for start in range(0, len(jobs), config.batch_size):
        chunk = jobs[start:start + config.batch_size]
        seeds = list(range(config.seed + start, config.seed + start + len(chunk)))
        images.append(generate(pipeline, [job for job, _ in chunk], seeds, sampling).images.float())
    return torch.cat(images), torch.tensor([label for _, label in jobs])


@torch.no_grad()
def reconstruct(pipeline: Pipeline, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Held-out images through the pipeline's tokenizer (encode, decode all scales)."""
    tokenizer = pipeline.tokenizer
    dtype = next(tokenizer.parameters()).dtype
    return torch.cat([tokenizer.decode(tokenizer.encode(chunk.to(pipeline.device, dtype))).float().cpu()
                      for chunk in images.split(batch_size)])


def evaluate(config: LabelAdherenceConfig) -> dict:
    """Judge the samples, the held-out images and their reconstructions; write and return the report."""
    model_dir, data_file = judge_directories(config.judge)
    judge = LabelJudge.from_pretrained(model_dir).to(config.device)
    saved = json.loads(data_file.read_text())
    known = {item.name for item in dataclasses.fields(DataConfig)}
    data = DataConfig(**{key: tuple(value) if isinstance(value, list) else value
                         for key, value in saved["data"].items() if key in known})
    pipeline = load_pipeline(config.pipeline, config.device)
    if pipeline.tokenizer.config.image_size != data.image_size:
        data = dataclasses.replace(data, image_size=pipeline.tokenizer.config.image_size)
    split = labelled_split(data, saved.get("label_column", "label"))
    if split.classes != judge.config.classes:
        raise ValueError(f"the judge knows the classes {judge.config.classes}, the data {split.classes}: train the "
                         "judge on this data")
    if split.held_out is None:
        raise ValueError(f"nothing is held out of {data.path}: there are no real images to compare with")
    num_classes = pipeline.transformer.config.num_classes
    if num_classes and num_classes != len(split.classes):
        raise ValueError(f"the pipeline is class-conditional over {num_classes} classes, the judge has "
                         f"{len(split.classes)}")
    args = SampleArgs(cfg=config.cfg, top_k=config.top_k, top_p=config.top_p)
    sampling = args.sampling_config(pipeline.recommended)
    prompts = class_prompts(split, config.images_per_class, class_names=data.source == "class-folder")
    real, labels = held_out_images(split, config.eval_images)
    rows: dict[str, dict] = {}
    features: dict[str, torch.Tensor] = {}
    samples, sample_labels = sample_classes(pipeline, prompts, config, sampling)
    for name, images, truth in (("real", real, labels), ("reconstructed", reconstruct(pipeline, real), labels),
                                ("samples", samples, sample_labels)):
        predicted, features[name] = judge.judge(images.to(config.device))
        rows[name] = accuracy(predicted.cpu(), truth, split.classes)
    report = {"pipeline": config.pipeline, "judge": str(model_dir), "classes": list(split.classes),
              "held_out_source": split.description, "held_out_images": len(labels),
              "images_per_class": config.images_per_class, "settings": settings_note(args, pipeline.recommended,
                                                                                     sampling),
              "sampling": dataclasses.asdict(sampling), "prompts": {name: sorted(set(texts)) for name, texts in
                                                                    zip(split.classes, prompts)},
              **rows, "gap": rows["real"]["mean_per_class"] - rows["samples"]["mean_per_class"],
              "frechet_distance": {name: frechet_distance(features[name].cpu(), features["real"].cpu())
                                   for name in ("reconstructed", "samples")}}
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "label_adherence.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    """The report as one table: per class, the judge's accuracy on real, reconstructed and sampled images."""
    width = max(12, *(len(name) for name in report["classes"]))
    lines = [f"label adherence of {report['pipeline']} on {report['judge']}: {len(report['classes'])} classes, "
             f"{report['images_per_class']} samples each, {report['held_out_images']} held-out real images "
             f"({report['held_out_source']})",
             report["settings"] or "sampling with the settings given on the command line",
             f"{'class':<{width}}  {'real':>6}  {'reconstructed':>13}  {'samples':>7}"]
    for name in report["classes"]:
        cells = [report[row]["per_class"].get(name) for row in ("real", "reconstructed", "samples")]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{'-' if cell is None else f'{cell:.3f}':>{size}}"
                                                      for cell, size in zip(cells, (6, 13, 7))))
    means = [report[row]["mean_per_class"] for row in ("real", "reconstructed", "samples")]
    lines.append(f"{'mean':<{width}}  {means[0]:>6.3f}  {means[1]:>13.3f}  {means[2]:>7.3f}")
    distances = report["frechet_distance"]
    lines.append(f"samples are {report['gap']:.3f} below held-out real images on this judge (the tokenizer's round "
                 f"trip alone: {means[0] - means[1]:.3f}); Fréchet distance of judge features to the held-out "
                 f"images: samples {distances['samples']:.2f}, reconstructions {distances['reconstructed']:.2f}")
    return "\n".join(lines)


def main(config: LabelAdherenceConfig) -> dict:
    report = evaluate(config)
    print(format_report(report))
    print(f"wrote {config.out / 'label_adherence.json'}")
    return report


if __name__ == "__main__":
    run_cli(LabelAdherenceConfig, main)
