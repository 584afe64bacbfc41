"""The processes of a training run: the Accelerator they share, the device they train on, the trackers,
and the end of the process group when a command ends (the runtime, `nextscale.train.runtime`, uses these)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    parse_flag_from_env,
)

from nextscale.train.run_config import RunConfig, has_native_bf16, resolve_precision

KILL_HOOK = "NEXTSCALE_TEST_KILL_AT"
"""Test hook: `<training>:<point>:<step>` SIGKILLs the main process at `point` of `step`, where point is
`step` (after the update), `checkpoint` (files written, not yet renamed) or `rotation` (old ones deleted)."""


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


def kill_hook(training: str, point: str, step: int) -> Callable[[], None] | None:
    """The SIGKILL of the `KILL_HOOK` test hook when it names this place, else None."""
    wanted = os.environ.get(KILL_HOOK)
    if wanted != f"{training}:{point}:{step}":
        return None
    return lambda: os.kill(os.getpid(), signal.SIGKILL)


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any process (one collective when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum")
    return bool(total.item() > 0)
