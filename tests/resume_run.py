"""A tiny tokenizer run, then a tiny transformer run on its export, resumed from `--resume latest`.

Run by tests/test_resume.py as a subprocess (alone or under `accelerate launch`), which SIGKILLs it at
chosen places through the runtime's test hook and compares the final weights with an uninterrupted run.
Usage: python tests/resume_run.py OUTPUT_DIR TEXT_ENCODER_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from accelerate import PartialState
from conftest import tiny_tokenizer_config
from test_training import tokenizer_run, var_run

from nextscale.data import DataConfig
from nextscale.tokenizer.losses.discriminator import AdversarialConfig
from nextscale.train.preview import PreviewConfig
from nextscale.train.tokenizer_loop import train_tokenizer
from nextscale.train.var_loop import train_var
from nextscale.transformer import TransformerConfig


def digest(module) -> str:
    hasher = hashlib.sha256()
    for value in module.state_dict().values():
        hasher.update(value.detach().float().numpy().tobytes())
    return hasher.hexdigest()


def main(out: Path, text_encoder: str) -> None:
    # EMA, dead-code restarts (unused codes fall under 0.95 after a few steps) and the discriminator on, and
    # mixing in the transformer run;
    # a tokenizer that finished in an earlier launch is not trained again
    tokenizer = None
    if not (out / "tokenizer" / "metrics.json").is_file():
        tokenizer = train_tokenizer(tokenizer_run(
            out / "tokenizer", steps=8, batch_size=4, checkpoint_every=2, keep_checkpoints=2, log_every=1,
            sample_every=1000, eval_images=8, ema_decay=0.8, resume="latest",
            model=tiny_tokenizer_config(dead_code_threshold=0.95),
            adversarial=AdversarialConfig(weight=0.01, start_step=3, channels=8, num_layers=2)))
    transformer = train_var(var_run(
        out / "var", out / "tokenizer" / "model", text_encoder, steps=8, batch_size=4, checkpoint_every=2,
        keep_checkpoints=2, log_every=1, cache_images=32, eval_images=8, cond_drop=0.5, mixing=0.5, resume="latest",
        data=DataConfig(image_size=16, synthetic_length=64), preview=PreviewConfig(every=0),
        model=TransformerConfig.preset("tiny", dropout=0.1)))
    state = PartialState()
    if tokenizer is not None:
        (out / f"rank{state.process_index}.json").write_text(json.dumps({
            "world": state.num_processes, "tokenizer": digest(tokenizer.model),
            "discriminator": digest(tokenizer.extra["discriminator"]), "transformer": digest(transformer.model),
            "learning_rates": [tokenizer.metrics.get("learning_rate_curve"),
                               transformer.metrics.get("learning_rate_curve")]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
