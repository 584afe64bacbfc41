"""The processes of a training run: the Accelerator they share, the device they train on, the trackers,
the waits for work one process does alone, and the end of the process group when a command ends (the
runtime, `nextscale.train.runtime`, uses these).

Two kinds of wait: the collectives of the steps (gradient all-reduce, the joint skip decision, logs)
time out after --collective-timeout, so that a frozen or dead peer ends the run within a minute; work
that one process does alone while the others wait (export and evaluation, building a cache, previews,
publishing a checkpoint) takes as long as it takes, and is waited for in a group of its own
(`wait_for_main`, `main_process_first`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from nextscale.train.distributed import accelerator_options, enable_fsdp_on_cpu
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
    precision = resolve_precision(config.mixed_precision, device.type, has_native_bf16(device))
    strategy = getattr(config, "distributed", "ddp")  # the transformer training's --distributed
    checkpointed = config.activation_checkpointing
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation, sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        log_with=tracker,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.collective_timeout))],
        **accelerator_options(strategy, precision, checkpointed),
    )
    enable_fsdp_on_cpu(accelerator, strategy, checkpointed)
    return accelerator


MAIN_WORK_TIMEOUT = timedelta(hours=24)
"""How long processes wait for work one process does alone (`wait_for_main`)."""
_main_work: list = []
"""The gloo group of `wait_for_main`, once the process group exists (one per process group)."""


def start_main_work(accelerator: Accelerator) -> None:
    """Make the group `wait_for_main` waits in (every process calls this at the same point: a new Runtime)."""
    if accelerator.num_processes > 1 and not _main_work and torch.distributed.is_initialized():
        _main_work.append(torch.distributed.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT))


def wait_for_main() -> None:
    """Wait until every process gets here, for as long as work that one process does alone takes (an export
    and its evaluation, a cache built once, a preview, a checkpoint published): such waits go through a
    group of their own that waits up to `MAIN_WORK_TIMEOUT`, so that the collectives of the steps can time
    out soon (--collective-timeout) when a peer froze or died. Nothing to wait for with one process."""
    if _main_work:
        torch.distributed.barrier(group=_main_work[0])


@contextmanager
def main_process_first(accelerator: Accelerator) -> Iterator[None]:
    """`accelerator.main_process_first()` waiting as `wait_for_main` does: the main process does the work
    (builds a cache) while the others wait for it however long it takes, then they do theirs (load it)."""
    if not accelerator.is_main_process:
        wait_for_main()
    yield
    if accelerator.is_main_process:
        wait_for_main()


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
    _main_work.clear()
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
