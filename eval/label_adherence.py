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
spread is. `--cfg-scales 1 2 4` samples at each guidance scale (one column each); `--record` stores the
scale whose samples the judge reads best in the pipeline, where sample.py picks it up. Writes
`--out`/label_adherence.json and prints one table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nextscale.data import DataConfig
from nextscale.errors import run_cli
from nextscale.eval.fid import frechet_distance
from nextscale.eval.label_judge import LabelJudge, accuracy, held_out_images
from nextscale.eval.labels import LabelledSplit, class_prompts, labelled_split
from nextscale.sampling.cli import SampleArgs, settings_note
from nextscale.sampling.pipeline import Pipeline, load_pipeline, record_sampling
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
    cfg_scales: tuple[float, ...] = ()
    """Guidance scales to sample at, one column each (default: --cfg's alone)."""
    record: bool = False
    """Store the guidance scale whose samples the judge reads best (scales within the sample's noise of the
    best count as tied; the lowest FD among them wins), with this run's top-k and top-p, in the pipeline's
    pipeline.json: sample.py then uses them."""
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


def labelled_data(config: LabelAdherenceConfig, judge: LabelJudge, data_file: Path, pipeline: Pipeline
                  ) -> tuple[LabelledSplit, bool]:
    """The judge's data split as its trainings split it, read at the pipeline's image size, checked against
    the judge and the pipeline; and whether a class's prompt is its name (a class folder)."""
    saved = json.loads(data_file.read_text())
    known = {item.name for item in dataclasses.fields(DataConfig)}
    data = DataConfig(**{key: tuple(value) if isinstance(value, list) else value
                         for key, value in saved["data"].items() if key in known})
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
    return split, data.source == "class-folder"


def choose_cfg(sweep: list[dict], images: int) -> dict:
    """The sweep row to recommend: the best mean per-class accuracy of the samples, where rows within one
    binomial standard error of the difference (`images` judged samples each) count as tied and the lowest
    Fréchet distance among them wins."""
    best = max(row["mean_per_class"] for row in sweep)

    def noise(rate: float) -> float:
        return rate * (1 - rate) / images

    tied = [row for row in sweep if best - row["mean_per_class"] <= (noise(best) + noise(row["mean_per_class"])) ** 0.5]
    return min(tied, key=lambda row: row["frechet_distance"])


def evaluate(config: LabelAdherenceConfig) -> dict:
    """Judge the held-out images, their reconstructions and the samples at every guidance scale; write and
    return the report (and with --record store the chosen scale in the pipeline)."""
    model_dir, data_file = judge_directories(config.judge)
    judge = LabelJudge.from_pretrained(model_dir).to(config.device)
    pipeline = load_pipeline(config.pipeline, config.device)
    split, class_names = labelled_data(config, judge, data_file, pipeline)
    args = SampleArgs(cfg=config.cfg, top_k=config.top_k, top_p=config.top_p)
    sampling = args.sampling_config(pipeline.recommended)
    prompts = class_prompts(split, config.images_per_class, class_names)
    real, labels = held_out_images(split, config.eval_images)
    predicted, real_features = judge.judge(real.to(config.device))
    report = {"pipeline": config.pipeline, "judge": str(model_dir), "classes": list(split.classes),
              "held_out_source": split.description, "held_out_images": len(labels),
              "images_per_class": config.images_per_class, "sampling": dataclasses.asdict(sampling),
              "settings": settings_note(args, pipeline.recommended, sampling) if not config.cfg_scales else
              f"sampling at cfg {scale_list(config.cfg_scales)} (--cfg-scales)",
              "prompts": {name: sorted(set(texts)) for name, texts in zip(split.classes, prompts)},
              "real": accuracy(predicted.cpu(), labels, split.classes)}
    predicted, features = judge.judge(reconstruct(pipeline, real).to(config.device))
    report["reconstructed"] = {**accuracy(predicted.cpu(), labels, split.classes),
                               "frechet_distance": frechet_distance(features.cpu(), real_features.cpu())}
    report["sweep"] = []
    for scale in config.cfg_scales or (sampling.cfg_scale,):
        images, truth = sample_classes(pipeline, prompts, config, dataclasses.replace(sampling, cfg_scale=scale))
        predicted, features = judge.judge(images.to(config.device))
        report["sweep"].append({"cfg_scale": scale, **accuracy(predicted.cpu(), truth, split.classes),
                                "frechet_distance": frechet_distance(features.cpu(), real_features.cpu())})
    best = choose_cfg(report["sweep"], len(split.classes) * config.images_per_class)
    report["best_cfg_scale"] = best["cfg_scale"]
    report["gap"] = report["real"]["mean_per_class"] - best["mean_per_class"]
    if config.record and pipeline.directory is not None:
        report["recorded"] = record_sampling(
            pipeline.directory, best["cfg_scale"], sampling.top_k, sampling.top_p,
            f"label adherence on {model_dir} over cfg {scale_list(row['cfg_scale'] for row in report['sweep'])}: "
            f"mean per-class accuracy of samples {best['mean_per_class']:.3f} (held-out images "
            f"{report['real']['mean_per_class']:.3f}), FD {best['frechet_distance']:.2f} at cfg {best['cfg_scale']:g}")
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "label_adherence.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def scale_list(scales: Iterable[float]) -> str:
    """Guidance scales as "1/2/4"."""
    return "/".join(f"{scale:g}" for scale in scales)


def format_report(report: dict) -> str:
    """The report as one table: per class, the judge's accuracy on held-out, reconstructed and sampled images
    (one column per guidance scale), the mean over classes and each column's FD to the held-out images."""
    width = max(12, *(len(name) for name in report["classes"]))
    columns = [("real", report["real"]), ("reconstructed", report["reconstructed"]),
               *((f"samples cfg {row['cfg_scale']:g}", row) for row in report["sweep"])]

    def line(label: str, cells: list[float | None], digits: int = 3) -> str:
        shown = ["-" if cell is None else f"{cell:.{digits}f}" for cell in cells]
        return f"{label:<{width}}" + "".join(f"  {text:>{max(6, len(title))}}"
                                             for text, (title, _) in zip(shown, columns))

    lines = [f"label adherence of {report['pipeline']} on {report['judge']}: {len(report['classes'])} classes, "
             f"{report['images_per_class']} samples each, {report['held_out_images']} held-out real images "
             f"({report['held_out_source']})",
             report["settings"] or "sampling with the settings given on the command line",
             f"{'class':<{width}}" + "".join(f"  {title:>{max(6, len(title))}}" for title, _ in columns)]
    lines += [line(name, [row["per_class"].get(name) for _, row in columns]) for name in report["classes"]]
    lines.append(line("mean", [row["mean_per_class"] for _, row in columns]))
    lines.append(line("FD", [row.get("frechet_distance") for _, row in columns], digits=2))
    real, reconstructed = report["real"]["mean_per_class"], report["reconstructed"]["mean_per_class"]
    chosen = f" at cfg {report['best_cfg_scale']:g}" if len(report["sweep"]) > 1 else ""
    where = "below" if report["gap"] >= 0 else "above"
    lines.append(f"samples{chosen} are {abs(report['gap']):.3f} {where} held-out real images on this judge (the "
                 f"tokenizer's round trip alone: {real - reconstructed:.3f} below); FD: Fréchet distance of judge "
                 "features to the held-out images")
    if "recorded" in report:
        lines.append(f"recorded in the pipeline: cfg {report['recorded']['cfg_scale']:g}")
    return "\n".join(lines)


def main(config: LabelAdherenceConfig) -> dict:
    report = evaluate(config)
    print(format_report(report))
    print(f"wrote {config.out / 'label_adherence.json'}")
    return report


if __name__ == "__main__":
    run_cli(LabelAdherenceConfig, main)
