"""Training-state checkpoints: `accelerate` save_state/load_state with a JSON step record.

Layout: `output_dir/checkpoints/step_<N>/` holds what `Accelerator.save_state` writes (model and
optimizer states, RNG states) plus `trainer_state.json` with the step. The step is read from that
file, never parsed from the folder name. A checkpoint is written under a temporary name and renamed
when complete, so an interrupted save never shadows the previous good one. These files are our own
training state (the optimizer state is pickled by torch): resume only from runs you made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from torch import nn

STATE_FILE = "trainer_state.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under output_dir/checkpoints as (step, path), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            state = path / STATE_FILE
            if path.is_dir() and not path.name.startswith(".") and state.is_file():
                found.append((int(json.loads(state.read_text())["step"]), path))
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, keep: int) -> Path:
    """Save the full training state at `step`; keep only the newest `keep` checkpoints."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, resume: str | None) -> int:
    """Load the state named by `resume` ("latest" or a checkpoint directory); return its step (0 if none)."""
    if not resume:
        return 0
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            accelerator.print(f"--resume latest: no checkpoint under {output_dir}/checkpoints, starting fresh")
            return 0
        step, path = found[-1]
    else:
        path = Path(resume)
        state = path / STATE_FILE
        if not state.is_file():
            raise FileNotFoundError(f"--resume {resume}: not a checkpoint directory (no {STATE_FILE})")
        step = int(json.loads(state.read_text())["step"])
    try:
        accelerator.load_state(str(path))
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"--resume {resume}: {path} does not fit this run ({type(err).__name__}: {err}). A checkpoint holds "
            "the modules and optimisers of the run that wrote it: resume with the same model and loss options "
            "(e.g. --adversarial.weight, --alignment.teacher) or start a new --output-dir."
        ) from err
    accelerator.print(f"resumed from {path} at step {step}")
    return step


def load_initial_weights(model: nn.Module, name_or_path: str) -> None:
    """`--init-from`: copy an exported model's weights into `model`, whose architecture must be the same.

    `model` is a `PretrainedMixin` module (tokenizer or transformer) with a dataclass `config`.
    """
    source = type(model).from_pretrained(name_or_path)
    ours, theirs = dataclasses.asdict(model.config), dataclasses.asdict(source.config)
    differ = [f"{k}: {theirs.get(k)} there, {ours[k]} here" for k in ours if ours[k] != theirs.get(k)]
    if differ:
        raise ValueError(f"--init-from {name_or_path} has another architecture ({'; '.join(differ)}): pass the "
                         "same --model options as its config.json")
    model.load_state_dict(source.state_dict())
