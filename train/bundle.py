"""Bundle trained runs into a self-contained demo directory (what `checkpoints/demo/` is).

    python -m nextscale.train.bundle --tokenizer-run runs/tokenizer --var-run runs/var --judge runs/judge \
        --out checkpoints/demo [--teacher runs/teacher]

Writes the sampling pipeline (weights stored as float16: half the size, loaded back as float32; the
transformer run's recommended sampling settings, when its pipeline.json has them), the judge, the demo
preset's alignment teacher (`--teacher`, or the one the bundle had) and one `metrics.json` gathering the
three runs' metrics, all in one atomic swap: a failed bundle leaves the previous one as it was.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nextscale.checkpoint import read_json_object
from nextscale.errors import run_cli
from nextscale.sampling.pipeline import PIPELINE_FILE, read_spec, write_pipeline
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import NextScaleTransformer


@dataclass(frozen=True)
class BundleArgs:
    """Gather a tokenizer run, a transformer run and a judge into one demo directory."""

    tokenizer_run: Path = Path("runs/tokenizer")
    """Output directory of train_tokenizer.py (holds model/ and metrics.json)."""
    var_run: Path = Path("runs/var")
    """Output directory of train_var.py (holds pipeline/ and metrics.json)."""
    judge: Path = Path("runs/judge")
    """Output directory of `python -m nextscale.portraits.train_judge` (holds model/ and metrics.json)."""
    out: Path = Path("checkpoints/demo")
    """The bundle to write (replaced atomically)."""
    teacher: Path | None = None
    """Output directory of `python -m nextscale.portraits.teacher` (holds model/ and metrics.json): the demo
    preset's alignment teacher, bundled as `teacher/`; by default the one already in --out is kept."""


def bundle(args: BundleArgs) -> Path:
    """Write the bundle `args.out` from the three runs (atomically); returns its path."""
    spec = read_spec(args.var_run / "pipeline" / PIPELINE_FILE)
    judge_model = args.judge / "model"
    if not judge_model.is_dir():
        raise FileNotFoundError(f"{judge_model} is not a directory: give --judge the output directory of "
                                "python -m nextscale.portraits.train_judge")
    metrics = {"tokenizer": read_json_object(args.tokenizer_run / "metrics.json"),
               "transformer": read_json_object(args.var_run / "metrics.json"),
               "judge": read_json_object(args.judge / "metrics.json")}
    tokenizer = MultiScaleVQVAE.from_pretrained(args.var_run / "pipeline" / spec["tokenizer"])
    transformer = NextScaleTransformer.from_pretrained(args.var_run / "pipeline" / spec["transformer"])

    teacher = args.out / "teacher" if args.teacher is None else args.teacher / "model"
    if args.teacher is not None and not teacher.is_dir():
        raise FileNotFoundError(f"{teacher} is not a directory: give --teacher the output directory of "
                                "python -m nextscale.portraits.teacher")

    def add_judge_and_metrics(directory: Path) -> None:
        shutil.copytree(judge_model, directory / "judge")
        shutil.copy(args.judge / "metrics.json", directory / "judge" / "metrics.json")
        if teacher.is_dir():
            shutil.copytree(teacher, directory / "teacher")
            if args.teacher is not None and (args.teacher / "metrics.json").is_file():
                shutil.copy(args.teacher / "metrics.json", directory / "teacher" / "metrics.json")
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    return write_pipeline(args.out, tokenizer, transformer, spec["text_encoder"], spec.get("text_max_length"),
                          dtype=torch.float16, sampling=spec.get("sampling"), extra=add_judge_and_metrics)


def main(args: BundleArgs) -> None:
    print(f"wrote {bundle(args)}")


if __name__ == "__main__":
    run_cli(BundleArgs, main)
