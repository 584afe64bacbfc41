"""Training-state checkpoints: Accelerate's save_state plus the run's own state, written atomically.

Layout of `output_dir/checkpoints/step_<N>/`:

    (Accelerate)            model(s), optimiser(s), scheduler(s), sampler, random_states_<rank>.pkl
    run_state_<rank>.safetensors   the state each training registers: weight EMA, its generators,
                                   codebook usage... (`Runtime.register`), one file per process
    trainer_state.json      step, loss history, skip counters (written last: it marks the checkpoint complete)

A checkpoint is written under `.step_<N>.tmp`, every file fsynced, then renamed; a crash leaves a stale
temporary directory, which the next save or resume removes. `--resume latest` takes the newest
checkpoint that loads: a damaged one is named with its error and skipped. Step numbers are read from
`trainer_state.json`, never parsed from folder names. The optimiser state inside is pickled by torch:
resume only from runs you made.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from nextscale.train.processes import wait_for_main

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RANDOM_STATE = "random_states_{rank}.pkl"
RUN_STATE = "run_state_{rank}.safetensors"


class Stateful(Protocol):
    """Anything a training registers to be checkpointed: a flat dict of tensors out and back in."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class GeneratorState:
    """A `torch.Generator` as a `Stateful` (its state is a uint8 tensor)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


class TensorState:
    """Tensors reached through a getter (e.g. a non-persistent buffer such as codebook usage), copied in place."""

    def __init__(self, tensors: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in self.tensors().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in self.tensors().items():
            value.data.copy_(state[name])


class CheckpointError(RuntimeError):
    """No checkpoint could be resumed from (each one's reason is in the message)."""


def _fsync_tree(root: Path) -> None:
    """fsync every file under root and the directories themselves, so a rename publishes durable data."""
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_step(path: Path) -> int | None:
    return _step_or_problem(path)[0]


def _step_or_problem(path: Path) -> tuple[int | None, str]:
    """(the step `path/trainer_state.json` records, "") or (None, why it cannot be read)."""
    try:
        return int(json.loads((path / STATE_FILE).read_text())["step"]), ""
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{type(error).__name__}: {error}".splitlines()[0][:200]


def damaged_checkpoints(output_dir: str | os.PathLike) -> list[tuple[Path, str]]:
    """Checkpoint folders under output_dir/checkpoints whose trainer_state.json does not load, with why
    (`list_checkpoints` leaves them out: they cannot be resumed from)."""
    root = Path(output_dir) / "checkpoints"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    found = [(path, _step_or_problem(path)) for path in folders]
    return [(path, problem) for path, (step, problem) in found if step is None]


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under output_dir/checkpoints as (step, path), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                step = _read_step(path)
                if step is not None:
                    found.append((step, path))
    return sorted(found)


def remove_stale(output_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary directories that interrupted saves left behind; return them."""
    root = Path(output_dir) / "checkpoints"
    stale = [path for path in root.glob(".step_*.tmp")] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_run_state(directory: Path, rank: int, registered: dict[str, Stateful]) -> None:
    tensors = {f"{name}/{key}": value.detach().cpu().contiguous().clone()
               for name, obj in registered.items() for key, value in obj.state_dict().items()}
    save_file(tensors, str(directory / RUN_STATE.format(rank=rank)))


def load_run_state(directory: Path, rank: int, registered: dict[str, Stateful]) -> None:
    path = directory / RUN_STATE.format(rank=rank)
    if not registered:
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    tensors = load_file(str(path))
    for name, obj in registered.items():
        prefix = f"{name}/"
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if not state:
            raise KeyError(f"{path.name} holds no state for {name!r}: written by a run with other options")
        obj.load_state_dict(state)


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, keep: int,
                    registered: dict[str, Stateful], trainer_state: dict,
                    before_publish: Callable[[], None] | None = None,
                    after_rotation: Callable[[], None] | None = None) -> Path:
    """Save the full training state at `step` atomically; keep only the newest `keep` checkpoints.

    `before_publish` and `after_rotation` are test hooks (a kill placed exactly there).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        remove_stale(output_dir)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    save_run_state(tmp, accelerator.process_index, registered)
    wait_for_main()  # the main process writes the largest files (weights, optimiser states)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, allow_nan=False) + "\n")
        _fsync_tree(tmp)
        if before_publish is not None:
            before_publish()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        if after_rotation is not None:
            after_rotation()
    wait_for_main()
    return final


def _check_random_state(path: Path, rank: int) -> str | None:
    """Why the random state of `rank` in `path` cannot be restored, or None when it can."""
    file = path / RANDOM_STATE.format(rank=rank)
    if not file.is_file():
        return f"{file.name} is missing"
    try:
        states = torch.load(file, map_location="cpu", weights_only=False)
        torch.Generator().set_state(states["torch_manual_seed"])
    except Exception as error:  # a damaged pickle raises anything
        return f"{file.name} does not load ({type(error).__name__}: {error})"
    return None


def load_checkpoint(accelerator: Accelerator, path: Path, registered: dict[str, Stateful],
                    accept_lost_random_state: bool) -> dict:
    """Load one checkpoint into the prepared objects and the registered state; return its trainer state."""
    state = json.loads((path / STATE_FILE).read_text())
    problem = _check_random_state(path, accelerator.process_index)
    if problem and not accept_lost_random_state:
        raise ValueError(f"its random state cannot be restored: {problem} (pass --accept-lost-random-state to "
                         "resume anyway, without reproducing an uninterrupted run)")
    accelerator.load_state(str(path))
    load_run_state(path, accelerator.process_index, registered)
    if problem:
        logger.warning("RESUMING WITHOUT THE RANDOM STATE of %s: %s; the run will not reproduce an uninterrupted "
                       "one (--accept-lost-random-state)", path, problem)
    return state


def check_resume_argument(resume: str | None) -> None:
    """Fail early (before any model loads) when --resume names neither latest nor a checkpoint directory."""
    if resume and resume != "latest" and _read_step(Path(resume)) is None:
        raise CheckpointError(f"--resume {resume}: not a checkpoint directory (no readable {STATE_FILE}); "
                              "pass latest or an output_dir/checkpoints/step_N folder")


def resume_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, resume: str | None,
                      registered: dict[str, Stateful], accept_lost_random_state: bool = False) -> dict:
    """Load the state named by `resume` ("latest" or a checkpoint directory); return its trainer state
    ({"step": 0} when there is nothing to resume).

    With "latest", a checkpoint that fails to load is named with its error and the previous one is tried;
    CheckpointError when none loads. Every process takes the same decision (the newest one that loads on
    all of them).
    """
    if accelerator.is_main_process:
        for path in remove_stale(output_dir):
            accelerator.print(f"removed {path}, left by an interrupted save")
    accelerator.wait_for_everyone()
    if not resume:
        return {"step": 0}
    if resume == "latest":
        for path, problem in damaged_checkpoints(output_dir):
            logger.warning("cannot resume from %s: its %s does not load (%s); skipped", path, STATE_FILE, problem)
        candidates = [path for _, path in reversed(list_checkpoints(output_dir))]
        if not candidates:
            accelerator.print(f"--resume latest: no checkpoint under {output_dir}/checkpoints, starting fresh")
            return {"step": 0}
    else:
        check_resume_argument(resume)
        candidates = [Path(resume)]
    failures = []
    for path in candidates:
        try:
            state = load_checkpoint(accelerator, path, registered, accept_lost_random_state)
            error = None
        except Exception as caught:  # damaged files raise anything: SafetensorError, EOFError, KeyError...
            state, error = {}, f"{type(caught).__name__}: {caught}".splitlines()[0][:300]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            errors = [e for e in gather_object([error]) if e]
            error = errors[0] if errors else None
        if error is None:
            accelerator.print(f"resumed from {path} at step {state['step']}")
            return state
        failures.append(f"{path}: {error}")
        logger.warning("cannot resume from %s (%s); trying an older checkpoint", path, error)
    raise CheckpointError(
        f"--resume {resume}: no checkpoint loads ({'; '.join(failures)}). A checkpoint holds the modules and "
        "optimisers of the run that wrote it: resume with the same model and loss options (e.g. "
        "--adversarial.weight, --alignment.teacher) or start a new --output-dir."
    )


ADDED_PARTS: dict[str, str] = {"layout_context": "detail_marker"}
"""Boolean config options that only add parameters (option -> their name prefix): `--init-from` a model
without the option into one with it keeps the added parameters' initialisation."""


def pipeline_part(name_or_path: str, model_class: str) -> str:
    """A pipeline directory (holding pipeline.json) -> its tokenizer or transformer part; anything else as is."""
    spec_file = Path(name_or_path) / "pipeline.json"
    if not spec_file.is_file():
        return name_or_path
    spec = json.loads(spec_file.read_text())
    part = spec.get("tokenizer" if model_class == "MultiScaleVQVAE" else "transformer")
    return str(Path(name_or_path) / part) if isinstance(part, str) else name_or_path


def load_initial_weights(model: nn.Module, name_or_path: str) -> None:
    """`--init-from`: copy an exported model's weights into `model`, whose architecture must be the same.

    `model` is a `PretrainedMixin` module (tokenizer or transformer) with a dataclass `config`.
    An option in `ADDED_PARTS` may be on here and off there: its parameters keep their initialisation
    (e.g. the transformer's `layout_context`, whose detail marker starts at zero).
    """
    source = type(model).from_pretrained(pipeline_part(name_or_path, type(model).__name__))
    ours, theirs = dataclasses.asdict(model.config), dataclasses.asdict(source.config)
    added = {k for k in ADDED_PARTS if ours.get(k) is True and theirs.get(k) is False}
    differ = [f"{k}: {theirs.get(k)} there, {ours[k]} here"
              for k in ours if ours[k] != theirs.get(k) and k not in added]
    if differ:
        raise ValueError(f"--init-from {name_or_path} has another architecture ({'; '.join(differ)}): pass the "
                         "same --model options as its config.json")
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    allowed = tuple(ADDED_PARTS[k] for k in added)
    stray = [key for key in missing if not (allowed and key.startswith(allowed))]
    if stray or unexpected:
        raise ValueError(f"--init-from {name_or_path}: weights do not match (missing {stray}, unexpected {unexpected})")
