"""A tiny transformer training under `accelerate launch` with --distributed ddp or fsdp, resumed from
`--resume latest` (tests/test_fsdp.py SIGKILLs it between steps through the runtime's test hook).
Usage: python tests/fsdp_run.py OUTPUT_DIR TOKENIZER_DIR TEXT_ENCODER_DIR ddp|fsdp [--activation-checkpointing]
"""

from __future__ import annotations

import sys
from pathlib import Path

from test_training import var_run

from nextscale.data import DataConfig
from nextscale.train.processes import close_process_group
from nextscale.train.var_loop import train_var
from nextscale.transformer import TransformerConfig


def main(out: Path, tokenizer: str, text_encoder: str, distributed: str, checkpointing: bool) -> None:
    train_var(var_run(out, tokenizer, text_encoder, steps=20, batch_size=4, checkpoint_every=5, keep_checkpoints=2,
                      log_every=1, cache_images=32, eval_images=8, cond_drop=0.5, resume="latest",
                      distributed=distributed, activation_checkpointing=checkpointing,
                      data=DataConfig(image_size=16, synthetic_length=64),
                      model=TransformerConfig.preset("tiny", dropout=0.1)))


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], "--activation-checkpointing" in sys.argv)
    finally:
        close_process_group()
