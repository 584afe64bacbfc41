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
import itertools
import json
import logging
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    gather_object,
    parse_flag_from_env,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

from nextscale.data import describe_data
from nextscale.data.badinput import merge_counts
from nextscale.train.run_config import (
    TENSORBOARD_DIR,
    RunConfig,
    has_native_bf16,
    precision_note,
    resolve_precision,
)
from nextscale.train.run_folder import check_run_folder, clear_run_folder
from nextscale.train.state import Stateful, check_resume_argument, resume_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

KILL_HOOK = "NEXTSCALE_TEST_KILL_AT"
"""Test hook: `<training>:<point>:<step>` SIGKILLs the main process at `point` of `step`, where point is
`step` (after the update), `checkpoint` (files written, not yet renamed) or `rotation` (old ones deleted)."""


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


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
        """After the update of `step` (0-based): EMA, codebook restarts, sample grids."""

    def finish(self, runtime: Runtime) -> dict:
        """Main process: export and evaluate; return the metrics."""

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        """Every process: the trained modules."""


def make_accelerator(config: RunConfig, tracker: str | None) -> Accelerator:
    """An Accelerator for one run: its own precision, seedable shuffling, a bounded collective wait.

    Accelerate keeps its state in process-wide singletons; they are reset (the process group is kept)
    so that one process can run several trainings whatever their precision. Schedules are defined per
    optimiser step and stepped by the runtime (Accelerate's default steps a prepared scheduler once per
    process). Accumulation never syncs early at an epoch end: every optimiser step has exactly
    `gradient_accumulation` micro-batches, which a resumed run reproduces.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    device = launch_device()
    return Accelerator(
        mixed_precision=resolve_precision(config.mixed_precision, device.type, has_native_bf16(device)),
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation, sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        log_with=tracker,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.collective_timeout))],
    )


def launch_device() -> torch.device:
    """The kind of device the Accelerator will train on, known before it is built (building Accelerate's
    process state early would lose the launcher's CPU processes): the CPU when `accelerate launch --cpu`
    or `ACCELERATE_USE_CPU` asks for it or no GPU is there, else CUDA or Apple's MPS."""
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def close_process_group() -> None:
    """End the distributed process group when a training command ends (the trainings themselves keep it,
    since one process may run several). Left to interpreter shutdown, a gloo group can abort the process
    ("terminate called without an active exception") after the run has finished."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers, keeping the process group (one process may run several trainings)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def resolve_tracker(choice: str) -> str | None:
    if choice == "none":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if choice == "tensorboard":
            raise ImportError("--tracker tensorboard needs `pip install tensorboard`") from None
        return None
    return "tensorboard"


def endless_batches(accelerator: Accelerator, loader, micro_steps_done: int = 0, batch_size: int | None = None,
                    source: Any = None) -> Iterator:
    """Batches of a prepared DataLoader forever, reshuffled every epoch (`set_epoch`).

    A resumed run passes how many batches it already consumed: whole epochs are skipped by number,
    the rest with `skip_first_batches`, so it continues with the batch it would have seen next. A pass
    that gives no batch at all is an error naming the data (an empty or too short source would
    otherwise loop forever or fail deep inside Accelerate): `source`, the dataset of source items behind
    the loader (default: the loader's own), and `batch_size`, the run's (a prepared loader may not know it).
    """
    try:
        per_epoch = len(loader)
    except TypeError:  # iterable datasets (WebDataset) have no length: no exact mid-epoch resume
        per_epoch = 0
    first_epoch, skip = divmod(micro_steps_done, per_epoch) if per_epoch else (0, 0)
    for epoch in itertools.count(first_epoch):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        set_data_epoch(loader, epoch)
        produced = 0
        iterator = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
        # Starting an epoch draws a worker seed from torch's global generator; a resumed run starts one
        # mid-epoch, so the draw is kept off the global sequence (dropout, restarts) in every run.
        try:
            with torch.random.fork_rng(devices=[]):
                batch = next(iterator, None)
        except ValueError as error:  # Accelerate's dispatcher of iterable data, on a pass without a batch
            if "does not contain any data" not in str(error):
                raise
            batch = None
        while batch is not None:
            produced += 1
            yield batch
            batch = next(iterator, None)
        if not produced and not skip:
            data = source if source is not None else getattr(loader, "dataset", None)
            detail = f": {describe_data(data)}" if data is not None else ""
            raise ValueError(f"the training data gave no batch of {batch_size or loader.batch_size} in a whole "
                             f"pass{detail}. Add data or lower --batch-size.")
        skip = 0


def set_data_epoch(loader: Any, epoch: int) -> None:
    """Tell the datasets under `loader` (through wrappers such as `Subset`, which hold theirs as
    `.dataset`) which pass begins, e.g. for random crops drawn per pass and item."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        dataset = getattr(dataset, "dataset", None)


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so that json.dumps stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(finite_json(value), indent=2, allow_nan=False) + "\n")


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def _kill_hook(training: str, point: str, step: int) -> Callable[[], None] | None:
    """The SIGKILL of the `KILL_HOOK` test hook when it names this place, else None."""
    wanted = os.environ.get(KILL_HOOK)
    if wanted != f"{training}:{point}:{step}":
        return None
    return lambda: os.kill(os.getpid(), signal.SIGKILL)


class Runtime:
    """One run of one training: the accelerator, the optimised parts, the registered state, the history."""

    def __init__(self, config: RunConfig, training: Training) -> None:
        self.config = config
        self.training = training
        self.output_dir = Path(config.output_dir)
        self.tracker = resolve_tracker(config.tracker)
        self.accelerator = make_accelerator(config, self.tracker)
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
        consecutive = int(resumed.get("consecutive_skips", 0))

        batches = endless_batches(accelerator, self.loader, start * config.gradient_accumulation, config.batch_size,
                                  self.source)
        progress = tqdm(range(start, config.steps), initial=start, total=config.steps,
                        disable=not accelerator.is_main_process, desc=training.name, dynamic_ncols=True)
        started, items_seen = time.perf_counter(), 0
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
            skipped = self._update(active, finite)
            consecutive = consecutive + 1 if skipped else 0
            if skipped:
                self.history["skipped_steps"].append(step + 1)
                accelerator.print(f"step {step + 1}: non-finite loss or gradient, update skipped "
                                  f"({consecutive} in a row)")
                if consecutive >= config.max_nonfinite_steps:
                    raise NonFiniteTraining(
                        f"{consecutive} consecutive steps (up to step {step + 1}) had a non-finite loss or gradient; "
                        "stopped without saving them. Lower --learning-rate, check the data, or resume from the "
                        "last checkpoint (it holds finite weights)."
                    )
            training.after_step(self, step, skipped)
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                self._log(step, losses, items_seen / (time.perf_counter() - started), progress)
            hook = _kill_hook(training.name, "step", step + 1)
            if hook is not None and accelerator.is_main_process:
                hook()
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                self.save(step + 1, consecutive)

        accelerator.wait_for_everyone()
        metrics: dict = {}
        if accelerator.is_main_process:
            for part in self.parts:
                if not all_finite(accelerator.unwrap_model(part.module)):
                    raise NonFiniteTraining("the trained weights are not finite; nothing was exported")
            metrics = training.finish(self)
            metrics.update(
                train_steps=config.steps, init_from=config.init_from,
                train_minutes=(time.perf_counter() - started) / 60,
                loss_curve=self.history["loss_curve"], learning_rate_curve=self.history["learning_rate_curve"],
                skipped_steps=self.history["skipped_steps"], resumed_at=self.history["resumed_at"],
                last_train_logs=self.logs,
            )
            if self.split is not None:
                metrics["held_out_split"] = self.split.record()
        skipped_inputs = self._skipped_inputs()
        if accelerator.is_main_process:
            metrics["skipped_inputs"] = skipped_inputs
            if skipped_inputs:
                accelerator.print("skipped inputs: " + ", ".join(f"{k}: {v}" for k, v in skipped_inputs.items()))
            write_json(self.output_dir / "metrics.json", metrics)
            metrics = finite_json(metrics)
        accelerator.wait_for_everyone()  # the export exists for every process once this returns
        finish_trackers(accelerator)
        return training.result(self, metrics)

    def _update(self, active: list[OptimisedPart], finite: bool) -> bool:
        """Clip and step the active parts unless a loss or gradient is non-finite on any process.

        Returns whether the update was skipped. Schedules advance either way (they are functions of the
        step). Under fp16 the gradient scaler keeps handling its own overflows.
        """
        accelerator = self.accelerator
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the optimiser steps")
        skip = self._any_process(not finite)
        if not skip:
            norms = []
            for part in active:
                parameters = [p for p in part.module.parameters() if p.grad is not None]
                if self.config.grad_clip > 0:
                    norms.append(accelerator.clip_grad_norm_(parameters, self.config.grad_clip))
                elif parameters:
                    norms.append(torch.linalg.vector_norm(torch.stack(
                        [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters])))
            finite_grads = all(bool(torch.isfinite(torch.as_tensor(n)).all()) for n in norms)
            skip = accelerator.scaler is None and self._any_process(not finite_grads)
        for part in active:
            if not skip:
                part.optimizer.step()
            part.optimizer.zero_grad(set_to_none=True)
            part.scheduler.step()
        return skip

    def _any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor([float(flag)], device=self.device), "sum")
        return bool(total.item() > 0)

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
        for part in self.parts:
            if not all_finite(self.accelerator.unwrap_model(part.module)):
                raise NonFiniteTraining(f"step {step}: the weights are not finite; the checkpoint was not written")
        state = {**finite_json(self.history), "consecutive_skips": consecutive_skips,
                 "mixed_precision": self.accelerator.mixed_precision}
        save_checkpoint(self.accelerator, self.output_dir, step, self.config.keep_checkpoints, self.registered,
                        state, before_publish=_kill_hook(self.training.name, "checkpoint", step),
                        after_rotation=_kill_hook(self.training.name, "rotation", step))

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
