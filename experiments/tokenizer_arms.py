"""One experiment harness for tokenizer arms: same data, steps, seed and evaluation for every arm.

Each arm is a named change of one base tokenizer training (`ARMS`): the lookup rule, dead-code restarts,
representation alignment (every scale, the last scale only, where its gradient goes). Every arm trains
with the project's own `train_tokenizer` into `out/ARM/` and is evaluated on the same held-out portraits
(PSNR, per-scale usage, code predictability) and, with a judge, on the same renders (agreement of the
judge's attributes between renders and reconstructions; Fréchet distance of reconstructions against
renders in the judge's features). With `--downstream`, a transformer is then trained on each arm's codes
with the project's own `train_var` (the same training for every arm, `out/ARM/var/`) and scored:
held-out loss per scale, and prompt adherence and FD of its samples at one guidance scale with the judge
(`out/ARM/adherence/`). A stage whose result file exists is not run again, so an interrupted experiment
continues. Alignment arms share one teacher-feature cache (`out/teacher-cache`). The table goes to
`out/arms.md` and `out/arms.json`.

    python -m nextscale.portraits.teacher --output-dir runs/teacher
    python -m experiments.tokenizer_arms --out runs/arms --teacher runs/teacher/model \\
        --arms cosine l2-restarts align-scales align-last --downstream
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import tyro

from nextscale.data import DataConfig
from nextscale.eval.fid import frechet_distance
from nextscale.images import from_uint8
from nextscale.portraits.adherence import EvaluationConfig, evaluate
from nextscale.portraits.judge import (
    AttributeJudge,
    attribute_accuracy,
    predict_all,
    reconstruct,
    render_portraits,
)
from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.losses.alignment import AlignmentConfig
from nextscale.train.preview import PreviewConfig
from nextscale.train.tokenizer_loop import TokenizerTrainConfig, train_tokenizer
from nextscale.train.var_loop import VarTrainConfig, train_var


def reduced_base() -> TokenizerTrainConfig:
    """The reduced-budget base: the demo architecture, 400 steps of 16 portraits (one pass over 6400)."""
    return TokenizerTrainConfig(
        model=TokenizerConfig(),
        data=DataConfig(synthetic_length=6400),
        alignment=AlignmentConfig(teacher="none"),  # the arms add it
        steps=400,
        batch_size=16,
        warmup_steps=40,
        log_every=25,
        sample_every=10_000,
        checkpoint_every=100,
        eval_images=512,
        tracker="none",
    )


def reduced_transformer() -> VarTrainConfig:
    """The reduced-budget transformer every arm's codes get: the demo architecture, 400 steps of 32
    sequences over a cache of the 6,400 training portraits the arms' tokenizers saw (two passes)."""
    return VarTrainConfig(
        data=DataConfig(synthetic_length=6400),
        steps=400,
        batch_size=32,
        warmup_steps=40,
        cache_images=6400,
        eval_images=512,
        log_every=25,
        checkpoint_every=100,
        preview=PreviewConfig(every=0),
        tracker="none",
    )


@dataclass(frozen=True)
class ArmsConfig:
    """Train and compare tokenizer arms at one budget."""

    out: str = "runs/arms"
    """Directory of the arms (one sub-directory each), the shared teacher cache and the table."""
    arms: tuple[str, ...] = ("cosine", "l2-restarts")
    """Arms to run, in order (names of `ARMS`)."""
    teacher: str | None = None
    """Alignment teacher (a local `transformers` vision backbone, e.g. from `nextscale.portraits.teacher`);
    needed by the align-* arms."""
    teacher_resolution: int = 64
    """Input side of the teacher."""
    alignment_weight: float = 0.5
    """Weight of the alignment loss in the align-* arms."""
    dead_code_threshold: float = 0.05
    """Restart threshold (EMA hits per step) of the *-restarts arms."""
    base: TokenizerTrainConfig = field(default_factory=reduced_base)
    """The training every arm shares (data, steps, batch, seed, schedule, evaluation)."""
    judge: str | None = str(DEMO_PIPELINE / "judge")
    """Attribute judge of the tokenizer check (the bundled one by default); None skips the check."""
    judge_images: int = 1024
    """Renders of the tokenizer check (data seed `judge_seed`; a second set of seed + 1 gives real vs real)."""
    judge_seed: int = 7
    """Data seed of the tokenizer check's renders."""
    downstream: bool = False
    """Also train a transformer on each arm's codes (`transformer`) and score it (held-out loss per scale;
    adherence and FD of samples at `cfg_scale` with the judge)."""
    transformer: VarTrainConfig = field(default_factory=reduced_transformer)
    """The transformer training every arm shares (its tokenizer and output directory are the arm's)."""
    cfg_scale: float = 2.0
    """Guidance scale of the downstream adherence evaluation."""
    images_per_prompt: int = 16
    """Images per prompt of the downstream adherence evaluation (24 single- and 12 3-attribute prompts)."""


def _alignment(config: ArmsConfig, base: TokenizerTrainConfig, **changes: object) -> TokenizerTrainConfig:
    if config.teacher is None:
        raise ValueError("the align-* arms need --teacher DIR (e.g. from python -m nextscale.portraits.teacher)")
    alignment = AlignmentConfig(teacher=config.teacher, weight=config.alignment_weight,
                                teacher_resolution=config.teacher_resolution,
                                cache_dir=str(Path(config.out) / "teacher-cache"))
    return replace(base, alignment=replace(alignment, **changes))


ARMS: dict[str, Callable[[ArmsConfig, TokenizerTrainConfig], TokenizerTrainConfig]] = {
    "cosine": lambda c, b: b,
    "l2": lambda c, b: replace(b, model=replace(b.model, lookup="l2")),
    "l2-restarts": lambda c, b: replace(b, model=replace(b.model, lookup="l2",
                                                         dead_code_threshold=c.dead_code_threshold)),
    "align-scales": lambda c, b: _alignment(c, b),
    "align-last": lambda c, b: _alignment(c, b, scales="last"),
    "align-scales-latent": lambda c, b: _alignment(c, b, gradient="latent"),
    "align-scales-codebook": lambda c, b: _alignment(c, b, gradient="codebook"),
}
"""Arm name -> its training config from (harness config, base training)."""


def arm_config(config: ArmsConfig, name: str) -> TokenizerTrainConfig:
    """The training of arm `name`: the base with the arm's change, written to `out/name`."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    return replace(ARMS[name](config, config.base), output_dir=str(Path(config.out) / name))


def run_arms(config: ArmsConfig) -> list[dict]:
    """Train the arms not trained yet, then return one summary row per arm (and write the table)."""
    for name in config.arms:
        arm_config(config, name)  # unknown names and missing teachers fail before any training
    if config.downstream and config.judge is None:
        raise ValueError("--downstream scores the transformers with a judge: give --judge DIR")
    rows: list[dict] = []
    renders: tuple[torch.Tensor, ...] | None = None
    for name in config.arms:
        train = arm_config(config, name)
        metrics_path = Path(train.output_dir) / "metrics.json"
        if not metrics_path.is_file():
            train_tokenizer(train)
        row = summarise(name, json.loads(metrics_path.read_text()))
        if config.judge is not None:
            check_path = Path(train.output_dir) / "judge_check.json"
            if not check_path.is_file():
                judge = AttributeJudge.from_pretrained(config.judge)
                renders = renders or tuple(
                    render_portraits(seed, config.judge_images, train.model.image_size, judge.config)[0]
                    for seed in (config.judge_seed, config.judge_seed + 1))
                tokenizer = MultiScaleVQVAE.from_pretrained(Path(train.output_dir) / "model")
                check = judge_check(judge, tokenizer, *renders)
                check_path.write_text(json.dumps(check, indent=2) + "\n")
            row.update(json.loads(check_path.read_text()))
        if config.downstream:
            row.update(downstream(config, Path(train.output_dir)))
        rows.append(row)
    out = Path(config.out)
    (out / "arms.json").write_text(json.dumps({"base": dataclasses.asdict(config.base), "arms": rows}, indent=2) + "\n")
    (out / "arms.md").write_text(format_arms(rows) + "\n")
    plot_arms(rows, out / "arms.png")
    return rows


def downstream(config: ArmsConfig, arm_dir: Path) -> dict:
    """Train the shared transformer on the codes of the tokenizer in `arm_dir/model` (unless done) and
    evaluate it; return its figures: held-out loss per scale, adherence and FD at `cfg_scale`."""
    var_dir = arm_dir / "var"
    if not (var_dir / "metrics.json").is_file():
        train_var(replace(config.transformer, tokenizer=str(arm_dir / "model"), output_dir=str(var_dir)))
    metrics = json.loads((var_dir / "metrics.json").read_text())
    report_path = arm_dir / "adherence" / "evaluation.json"
    if not report_path.is_file():
        evaluate(EvaluationConfig(checkpoint=str(var_dir / "pipeline"), judge=config.judge, out=report_path.parent,
                                  images_per_prompt=config.images_per_prompt, cfg_scales=(config.cfg_scale,),
                                  progression=False))
    report = json.loads(report_path.read_text())
    sweep = report["sweep"][0]
    num_scales = sum(1 for key in metrics if key.startswith("loss_scale"))
    return {
        "var_held_out_loss": metrics["held_out_loss"],
        "var_loss_per_scale": [metrics[f"loss_scale{k}"] for k in range(num_scales)],
        "var_train_minutes": metrics.get("train_minutes"),
        "adherence_cfg": sweep["cfg_scale"],
        "adherence_single": sweep["single"]["mean"],
        "adherence_triple": sweep["triple"]["all_correct"],
        "sample_frechet_distance": sweep["frechet_distance"],
        "sample_frechet_distance_real_vs_real": report["real"]["frechet_distance_real_vs_real"],
    }


@torch.no_grad()
def judge_check(judge: AttributeJudge, tokenizer: MultiScaleVQVAE, images: torch.Tensor,
                other_images: torch.Tensor) -> dict:
    """The judge on renders (uint8 (n, 3, H, W)) and on their reconstructions: per-attribute agreement,
    and Fréchet distances in the judge's features (reconstructions vs renders, and renders vs
    `other_images`, renders of another seed, as the floor)."""
    judge.eval()
    reconstructed = reconstruct(tokenizer, images)
    names = judge.config.attribute_names
    agreement = attribute_accuracy(predict_all(judge, reconstructed), predict_all(judge, images), names)
    features = {name: torch.cat([judge.features(from_uint8(chunk)) for chunk in batch.split(256)])
                for name, batch in (("real", images), ("other", other_images), ("reconstructed", reconstructed))}
    return {"agreement": agreement, "frechet_distance": frechet_distance(features["reconstructed"], features["real"]),
            "frechet_distance_real_vs_real": frechet_distance(features["other"], features["real"])}


def summarise(name: str, metrics: dict) -> dict:
    """One arm's figures for the table, from its `metrics.json`."""
    per_scale = metrics["per_scale"]
    return {
        "arm": name,
        "psnr": metrics["psnr"],
        "usage": metrics["codebook_usage"],
        "usage_per_scale": [row["usage"] for row in per_scale],
        "perplexity_per_scale": [row["perplexity"] for row in per_scale],
        "conditional_perplexity_per_scale": [math.exp(row["conditional_entropy"]) for row in per_scale],
        "flat_perplexity_per_scale": [row["flat_perplexity"] for row in per_scale],
        "textured_perplexity_per_scale": [row["textured_perplexity"] for row in per_scale],
        "flat_fraction_per_scale": [row["flat_fraction"] for row in per_scale],
        "train_minutes": metrics.get("train_minutes"),
    }


def format_arms(rows: Sequence[dict]) -> str:
    """A markdown table of the arms: the two finest scales in detail."""
    lines = [
        "| arm | PSNR | usage | usage per scale | exp(H\\|parent), two finest | flat / textured perplexity, "
        "two finest | ratio | judge agreement: lowest, gender, smile | FD (real vs real) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        usage = "/".join(f"{100 * u:.0f}" for u in row["usage_per_scale"])
        conditional = " / ".join(f"{p:.0f}" for p in row["conditional_perplexity_per_scale"][-2:])
        flat = [f"{f:.0f}/{t:.0f}" for f, t in zip(row["flat_perplexity_per_scale"][-2:],
                                                    row["textured_perplexity_per_scale"][-2:])]
        ratio = " / ".join(f"{f / t:.2f}" for f, t in zip(row["flat_perplexity_per_scale"][-2:],
                                                          row["textured_perplexity_per_scale"][-2:]))
        judged = agreement = ""
        if "agreement" in row:
            lowest = min(row["agreement"], key=row["agreement"].get)
            agreement = (f"{lowest} {100 * row['agreement'][lowest]:.1f}%, {100 * row['agreement']['gender']:.1f}%, "
                         f"{100 * row['agreement']['smile']:.1f}%")
            judged = f"{row['frechet_distance']:.0f} ({row['frechet_distance_real_vs_real']:.0f})"
        lines.append(f"| {row['arm']} | {row['psnr']:.2f} dB | {100 * row['usage']:.1f}% | {usage} | {conditional} | "
                     f"{', '.join(flat)} | {ratio} | {agreement} | {judged} |")
    if any("var_held_out_loss" in row for row in rows):
        lines += ["", "| arm | transformer held-out loss | loss per scale | adherence: single, 3-attribute "
                  "| FD of samples (real vs real) |", "|---|---|---|---|---|"]
        for row in rows:
            if "var_held_out_loss" in row:
                per_scale = " / ".join(f"{loss:.2f}" for loss in row["var_loss_per_scale"])
                lines.append(f"| {row['arm']} | {row['var_held_out_loss']:.3f} | {per_scale} | "
                             f"{row['adherence_single']:.3f}, {row['adherence_triple']:.3f} (cfg "
                             f"{row['adherence_cfg']:g}) | {row['sample_frechet_distance']:.0f} "
                             f"({row['sample_frechet_distance_real_vs_real']:.0f}) |")
    return "\n".join(lines)


def plot_arms(rows: Sequence[dict], path: Path) -> Path | None:
    """One figure of the arms: the transformer's held-out loss per scale, the flat / textured perplexity
    ratio at the two finest scales (against the quarter target), and PSNR against the transformer's
    held-out loss. None when matplotlib (the `bench` extra) is missing or no arm has a transformer."""
    rows = [row for row in rows if "var_held_out_loss" in row]
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for row in rows:
        losses = row["var_loss_per_scale"]
        axes[0].plot(range(len(losses)), losses, "o-", label=row["arm"])
    axes[0].set_xlabel("scale (coarse to fine)")
    axes[0].set_ylabel("transformer held-out loss (nats)")
    axes[0].set_title("what the transformer pays per scale", fontsize=10)
    axes[0].legend(fontsize=8)
    width = 0.8 / 2
    for offset, index, label in ((-width / 2, -2, "second finest"), (width / 2, -1, "finest")):
        ratios = [row["flat_perplexity_per_scale"][index] / row["textured_perplexity_per_scale"][index] for row in rows]
        axes[1].bar([k + offset for k in range(len(rows))], ratios, width, label=f"{label} scale")
    axes[1].axhline(0.25, color="black", linestyle="--", linewidth=1, label="target 0.25")
    axes[1].set_xticks(range(len(rows)), [row["arm"] for row in rows], rotation=20, fontsize=8)
    axes[1].set_ylabel("flat / textured code perplexity")
    axes[1].set_title("codes where the image is flat", fontsize=10)
    axes[1].legend(fontsize=8)
    for row in rows:
        axes[2].scatter(row["psnr"], row["var_held_out_loss"])
        axes[2].annotate(row["arm"], (row["psnr"], row["var_held_out_loss"]), fontsize=8)
    axes[2].set_xlabel("tokenizer held-out PSNR (dB)")
    axes[2].set_ylabel("transformer held-out loss (nats)")
    axes[2].set_title("fidelity against predictability", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(config: ArmsConfig) -> None:
    print(format_arms(run_arms(config)))


if __name__ == "__main__":
    main(tyro.cli(ArmsConfig))
