"""Bundle trained runs into a self-contained demo directory (what `checkpoints/demo/` is).

    python -m nextscale.train.bundle --tokenizer-run runs/tokenizer --var-run runs/var --judge runs/judge \
        --out checkpoints/demo

Writes the sampling pipeline (weights stored as float16: half the size, loaded back as float32), the
judge, and one `metrics.json` gathering the three runs' metrics.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from nextscale.sampling.pipeline import PIPELINE_FILE, write_pipeline
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
    """Output directory of `python -m nextscale.train.eval.judge` (holds model/ and metrics.json)."""
    out: Path = Path("checkpoints/demo")
    """The bundle to write (replaced atomically)."""


def bundle(args: BundleArgs) -> Path:
    spec = json.loads((args.var_run / "pipeline" / PIPELINE_FILE).read_text())
    tokenizer = MultiScaleVQVAE.from_pretrained(args.var_run / "pipeline" / spec["tokenizer"])
    transformer = NextScaleTransformer.from_pretrained(args.var_run / "pipeline" / spec["transformer"])
    write_pipeline(args.out, tokenizer, transformer, spec["text_encoder"], spec["text_max_length"],
                   dtype=torch.float16)
    shutil.copytree(args.judge / "model", args.out / "judge")
    shutil.copy(args.judge / "metrics.json", args.out / "judge" / "metrics.json")
    metrics = {
        "tokenizer": json.loads((args.tokenizer_run / "metrics.json").read_text()),
        "transformer": json.loads((args.var_run / "metrics.json").read_text()),
        "judge": json.loads((args.judge / "metrics.json").read_text()),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return args.out


if __name__ == "__main__":
    print(f"wrote {bundle(tyro.cli(BundleArgs))}")
