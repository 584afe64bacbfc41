"""A toy training for the runtime's own tests: a linear regression whose loss can be made non-finite,
whose weights can be poisoned, and whose process 1 can freeze or die, at chosen steps.

Usage (as a script, under `accelerate launch`): python tests/toy_training.py --output-dir DIR [options]
(every ToyConfig field is an option).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nextscale.train.errors import run_cli
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group


@dataclass(frozen=True)
class ToyConfig(RunConfig):
    """The toy run."""

    nan_steps: tuple[int, ...] = ()
    """0-based steps whose loss is NaN."""
    nan_rank: int | None = None
    """Only this process gets the NaN losses (None: all)."""
    poison_step: int | None = None
    """After this 0-based step, set a weight to NaN (what a bug in an objective could do)."""
    freeze_step: int | None = None
    """Process 1 sleeps a minute at this step (a frozen peer)."""
    die_step: int | None = None
    """Process 1 kills itself with SIGKILL at this step (a peer that dies: kill -9, the OOM killer)."""
    main_work: float = 0.0
    """Seconds of work the main process does alone after step 1 and in `finish` (an export, a preview)."""
    items: int = 64
    """Training items."""


class ToyTraining:
    name = "toy"

    def __init__(self, config: ToyConfig) -> None:
        self.config = config

    def setup(self, runtime: Runtime) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        self.model = nn.Linear(4, 1)
        inputs = torch.randn(config.items, 4, generator=torch.Generator().manual_seed(1))
        targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets),
                                             batch_size=config.batch_size, shuffle=True, drop_last=True)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        self.module, optimizer, scheduler, runtime.loader = runtime.accelerator.prepare(
            self.model, optimizer, scheduler, loader)
        runtime.add_part(self.module, optimizer, scheduler)

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        config, rank = self.config, runtime.accelerator.process_index
        if config.freeze_step == step and rank == 1:
            time.sleep(60)
        if config.die_step == step and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.module(inputs), targets)
        if step in config.nan_steps and config.nan_rank in (None, rank):
            loss = loss * float("nan")
        runtime.accelerator.backward(loss)
        return {"loss": loss.detach()}

    def main_work_at(self, step: int) -> bool:
        return step == 1

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        if step == 1 and runtime.accelerator.is_main_process:
            time.sleep(self.config.main_work)
        if self.config.poison_step == step:
            with torch.no_grad():
                self.model.weight[0, 0] = float("nan")

    def finish(self, runtime: Runtime) -> dict:
        time.sleep(self.config.main_work)
        return {"weight": self.model.weight.detach().flatten().tolist()}

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        return TrainResult(model=self.model, metrics=metrics)


def train_toy(config: ToyConfig) -> TrainResult:
    return Runtime(config, ToyTraining(config)).run()


if __name__ == "__main__":
    try:  # as the trainings' command lines do
        run_cli(ToyConfig, train_toy, sys.argv[1:])
    finally:
        close_process_group()
