"""The one training runtime: every training (tokenizer, transformer, judge) plugs its objective into it.

The runtime owns what every training needs and what is easy to get subtly wrong in each copy:
Accelerate setup (per-run precision, collective timeout), `prepare`, resume, gradient accumulation,
clipping, the jointly decided skip of non-finite steps, synchronised logging, checkpoint cadence and
`metrics.json`. A training (`Training`) builds its modules and optimisers, registers the extra state
that shapes its future (weight EMA, generators, codebook usage), computes the losses of one
micro-batch, and exports its model at the end.

    for step in range(start, steps):
        for each micro-batch:  losses = training.micro_step(batch, step)   # backward inside
        if any loss or gradient is non-finite on any process: skip the update (counted, logged)
        else: clip, optimiser step(s)
        schedulers step; training.after_step(step); log; checkpoint
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from nextscale.data.badinput import merge_counts
from nextscale.train.batches import endless_batches, set_data_epoch
from nextscale.train.nonfinite import (
    NonFiniteTraining,
    check_weights,
    count_skip,
    finite_json,
    update_parts,
    write_json,
)
from nextscale.train.processes import (
    KILL_HOOK,
    close_process_group,
    finish_trackers,
    kill_hook,
    launch_device,
    main_process_first,
    make_accelerator,
    resolve_tracker,
    start_main_work,
    wait_for_main,
)
from nextscale.train.run_config import TENSORBOARD_DIR, RunConfig, precision_note
from nextscale.train.run_folder import check_run_folder, clear_run_folder
from nextscale.train.state import Stateful, check_resume_argument, resume_checkpoint, save_checkpoint

__all__ = ["KILL_HOOK", "NonFiniteTraining", "OptimisedPart", "Runtime", "TrainResult", "Training",
           "close_process_group", "endless_batches", "finite_json", "launch_device", "main_process_first",
           "set_data_epoch"]
"""Besides the runtime itself, what trainings and tests import from here (defined beside it: the processes
in `processes`, the batches in `batches`, the non-finite handling in `nonfinite`)."""


@dataclass
class TrainResult:
    """What a training run returns: the trained module (on every process) and the main process's metrics."""

    model: torch.nn.Module
    metrics: dict
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)
    """Training-only modules worth keeping (the tokenizer's discriminator)."""


@dataclass
class OptimisedPart:
    """A prepared module with its prepared optimiser and schedule, stepped by the runtime."""

    module: nn.Module
    optimizer: Any
    scheduler: Any
    active: Callable[[int], bool] = lambda step: True
    """Whether the part trains at a step (the discriminator starts late)."""


class Training(Protocol):
    """What a training plugs into the runtime."""

    name: str

    def setup(self, runtime: Runtime) -> None:
        """Build modules and data; call `runtime.add_part`, `runtime.register`, set `runtime.loader`."""

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Forward and `accelerator.backward` of one micro-batch; return its scalar losses (key "loss")."""

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        """After the update of `step` (0-based): EMA, codebook restarts, sample grids. A training whose main
        process works alone there (a preview) says at which steps with `main_work_at(step) -> bool`: the
        other processes then wait for it however long it takes (`processes.wait_for_main`)."""

    def finish(self, runtime: Runtime) -> dict:
        """Main process: export and evaluate; return the metrics."""

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        """Every process: the trained modules."""


class Runtime:
    """One run of one training: the accelerator, the optimised parts, the registered state, the history."""

    def __init__(self, config: RunConfig, training: Training) -> None:
        self.config = config
        self.training = training
        self.output_dir = Path(config.output_dir)
        self.tracker = resolve_tracker(config.tracker)
        self.accelerator = make_accelerator(config, self.tracker)
        start_main_work(self.accelerator)
        self.parts: list[OptimisedPart] = []
        self.registered: dict[str, Stateful] = {}
        self.loader: Any = None
        self.source: Any = None
        """The dataset of source items behind the loader, when the loader reads a cache of it."""
        self.split: Any = None
        """The training's `EvaluationSplit`, when it holds data out: recorded in metrics.json
        (`held_out_split`), and the bad inputs of its held-out part are counted with the training data's."""
        self.history: dict = {"loss_curve": [], "learning_rate_curve": [], "skipped_steps": [],
                              "resumed_at": []}
        self.logs: dict = {}

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def add_part(self, module: nn.Module, optimizer: Any, scheduler: Any,
                 active: Callable[[int], bool] = lambda step: True) -> OptimisedPart:
        """Register an already prepared module + optimiser + schedule for the runtime to step."""
        part = OptimisedPart(module, optimizer, scheduler, active)
        self.parts.append(part)
        return part

    def register(self, name: str, state: Stateful) -> None:
        """Checkpoint `state` with the run (weight EMA, a generator, a buffer) and restore it on resume."""
        if name in self.registered:
            raise ValueError(f"state {name!r} registered twice")
        self.registered[name] = state

    def run(self) -> TrainResult:
        """Set up, train (from the checkpoint `--resume` names, if any), export and write metrics.json."""
        start, consecutive = self._begin()
        started = time.perf_counter()
        self._train(start, consecutive, started)
        metrics = self._end(started)
        finish_trackers(self.accelerator)
        return self.training.result(self, metrics)

    def _begin(self) -> tuple[int, int]:
        """Everything before the first step; returns (the step to start at, the skips in a row so far)."""
        config, accelerator, training = self.config, self.accelerator, self.training
        check_resume_argument(config.resume)
        check_run_folder(self.output_dir, config.resume, config.overwrite)
        if config.overwrite:
            if accelerator.is_main_process:
                for path in clear_run_folder(self.output_dir):
                    accelerator.print(f"--overwrite: removed {path}")
            accelerator.wait_for_everyone()
        set_seed(config.seed)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "train_config.json",
                       {**dataclasses.asdict(config), "mixed_precision_used": accelerator.mixed_precision})
        if self.tracker:
            accelerator.init_trackers(TENSORBOARD_DIR, config={"steps": config.steps, "batch_size": config.batch_size,
                                                               "learning_rate": config.learning_rate})
        note = precision_note(config.mixed_precision, accelerator.mixed_precision, os.environ)
        if note:
            accelerator.print(note)
        if self.tracker:
            logs = self.output_dir / TENSORBOARD_DIR
            accelerator.print(f"TensorBoard logs: {logs} (tensorboard --logdir {logs})")
        training.setup(self)
        return self._resume()

    def _resume(self) -> tuple[int, int]:
        """Load the checkpoint `--resume` names (nothing without it) and the history it carries."""
        config, accelerator = self.config, self.accelerator
        resumed = resume_checkpoint(accelerator, self.output_dir, config.resume, self.registered,
                                    config.accept_lost_random_state)
        start = int(resumed["step"])
        trained_in = resumed.get("mixed_precision", accelerator.mixed_precision)
        if trained_in != accelerator.mixed_precision:
            accelerator.print(f"warning: the checkpoint was trained in mixed precision {trained_in}, this run uses "
                              f"{accelerator.mixed_precision}: pass --mixed-precision {trained_in} to continue it "
                              "exactly")
        for key in self.history:
            self.history[key] = list(resumed.get(key, []))
        if start:
            self.history["resumed_at"].append(start)
        return start, int(resumed.get("consecutive_skips", 0))

    def _train(self, start: int, consecutive: int, started: float) -> None:
        """The steps from `start` to the last: micro-batches, the update (or its joint skip), logs, checkpoints."""
        config, accelerator, training = self.config, self.accelerator, self.training
        batches = endless_batches(accelerator, self.loader, start * config.gradient_accumulation, config.batch_size,
                                  self.source)
        progress = tqdm(range(start, config.steps), initial=start, total=config.steps,
                        disable=not accelerator.is_main_process, desc=training.name, dynamic_ncols=True)
        items_seen, main_work_at = 0, getattr(training, "main_work_at", lambda step: False)
        for step in progress:
            for part in self.parts:
                part.module.train()
            active = [part for part in self.parts if part.active(step)]
            finite = True
            for _ in range(config.gradient_accumulation):
                batch = next(batches)
                with accelerator.accumulate(*[part.module for part in active]):
                    losses = training.micro_step(self, batch, step)
                finite = finite and all(bool(torch.isfinite(v).all()) for v in losses.values())
                items_seen += config.batch_size * accelerator.num_processes
            skipped = update_parts(accelerator, active, finite, config.grad_clip)
            consecutive = (count_skip(self.history, consecutive, step, config.max_nonfinite_steps, accelerator.print)
                           if skipped else 0)
            training.after_step(self, step, skipped)
            if main_work_at(step):
                wait_for_main()  # however long the main process's own work there took (a preview, a grid)
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                self._log(step, losses, items_seen / (time.perf_counter() - started), progress)
            hook = kill_hook(training.name, "step", step + 1)
            if hook is not None and accelerator.is_main_process:
                hook()
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                self.save(step + 1, consecutive)

    def _end(self, started: float) -> dict:
        """The main process exports, evaluates and writes metrics.json; every process returns the metrics."""
        config, accelerator = self.config, self.accelerator
        accelerator.wait_for_everyone()
        metrics: dict = {}
        if accelerator.is_main_process:
            check_weights(accelerator, self.parts, "the trained weights are not finite; nothing was exported")
            metrics = self.training.finish(self)
            metrics.update(
                train_steps=config.steps, init_from=config.init_from,
                train_minutes=(time.perf_counter() - started) / 60,
                loss_curve=self.history["loss_curve"], learning_rate_curve=self.history["learning_rate_curve"],
                skipped_steps=self.history["skipped_steps"], resumed_at=self.history["resumed_at"],
                last_train_logs=self.logs,
            )
            if self.split is not None:
                metrics["held_out_split"] = self.split.record()
        wait_for_main()  # however long the export and evaluation took
        skipped_inputs = self._skipped_inputs()
        if accelerator.is_main_process:
            metrics["skipped_inputs"] = skipped_inputs
            if skipped_inputs:
                accelerator.print("skipped inputs: " + ", ".join(f"{k}: {v}" for k, v in skipped_inputs.items()))
            write_json(self.output_dir / "metrics.json", metrics)
            metrics = finite_json(metrics)
        accelerator.wait_for_everyone()  # the export exists for every process once this returns
        return metrics

    def _log(self, step: int, losses: dict[str, torch.Tensor], items_per_s: float, progress: tqdm) -> None:
        accelerator = self.accelerator
        reduced = {key: accelerator.reduce(value.detach().float().mean(), "mean").item()
                   for key, value in losses.items()}
        learning_rate = self.parts[0].scheduler.get_last_lr()[0]
        self.logs = {**reduced, **self.training_logs(reduced), "learning_rate": learning_rate,
                     "items_per_s": items_per_s}
        loss = reduced.get("loss", float("nan"))
        self.history["loss_curve"].append([step + 1, loss if math.isfinite(loss) else None])
        self.history["learning_rate_curve"].append([step + 1, learning_rate])
        shown = getattr(self.training, "progress_keys", ())  # terms worth seeing beside the loss
        progress.set_postfix(loss=f"{loss:.4f}", **{key: f"{self.logs[key]:.4g}" for key in shown if key in self.logs})
        accelerator.log(finite_json(self.logs), step=step + 1)

    def training_logs(self, reduced: dict[str, float]) -> dict[str, float]:
        extra = getattr(self.training, "extra_logs", None)
        return extra(reduced) if extra is not None else {}

    def save(self, step: int, consecutive_skips: int = 0) -> None:
        """Checkpoint at `step`. The weights are finite here: non-finite updates are never applied."""
        check_weights(self.accelerator, self.parts,
                      f"step {step}: the weights are not finite; the checkpoint was not written")
        state = {**finite_json(self.history), "consecutive_skips": consecutive_skips,
                 "mixed_precision": self.accelerator.mixed_precision}
        save_checkpoint(self.accelerator, self.output_dir, step, self.config.keep_checkpoints, self.registered,
                        state, before_publish=kill_hook(self.training.name, "checkpoint", step),
                        after_rotation=kill_hook(self.training.name, "rotation", step))

    def _skipped_inputs(self) -> dict[str, int]:
        """Bad inputs skipped by the training data and the held-out data, by reason, over every process (an
        input met by several processes counts once)."""
        training = self.source if self.source is not None else getattr(self.loader, "dataset", None)
        parts = [training, self.split.evaluation if self.split is not None else None]
        trackers = [getattr(getattr(part, "dataset", part), "tracker", None) for part in parts]  # under a Subset
        snapshots = [tracker.snapshot() if tracker is not None else None for tracker in trackers]
        gathered = gather_object([snapshots]) if self.accelerator.num_processes > 1 else [snapshots]
        total: Counter = Counter()
        for role in range(len(parts)):
            total.update(merge_counts([each[role] for each in gathered if each[role] is not None]))
        return dict(sorted(total.items()))
