"""What a training run may find in its output folder before it starts, for every training alike.

A run writes `checkpoints/`, its export (`model/`, the transformer's `pipeline/`), sample grids and
`metrics.json` into `--output-dir`. A fresh run (no `--resume`) into a folder that holds another run
would overwrite that run's export and metrics while keeping its checkpoints, so that a later `--resume
latest` would continue the old run under the new export: it refuses, with one line naming what is there
and the three ways on (`--resume latest`, a new `--output-dir`, `--overwrite`). `--overwrite` removes
the old run's entries first; anything else in the folder (a cache, the user's own files) is kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nextscale.train.state import list_checkpoints

FINISHED = ("metrics.json", "model", "pipeline")
"""What a finished run leaves (metrics.json last)."""
RUN_ENTRIES = ("checkpoints", *FINISHED, "samples", "previews", "train_config.json")
"""Everything a run of this project writes into its folder, beside caches (removed by --overwrite)."""


class RunFolderInUse(ValueError):
    """The output folder holds another run, and the command line says neither to continue nor to replace it."""


def _describe(output_dir: Path) -> str | None:
    """What run `output_dir` holds ("a finished run (metrics.json, model/)", "the checkpoints (step 2, 4) of
    a run"), or None when it holds none."""
    finished = [name + ("/" if (output_dir / name).is_dir() else "") for name in FINISHED
                if (output_dir / name).exists()]
    if finished:
        return f"a finished run ({', '.join(finished)})"
    checkpoints = output_dir / "checkpoints"
    steps = [str(step) for step, _ in list_checkpoints(output_dir)]
    if steps:
        return f"the checkpoints (step {', '.join(steps)}) of a run"
    if checkpoints.is_dir() and any(not path.name.startswith(".") for path in checkpoints.iterdir()):
        return "the checkpoints of a run"
    return None


def check_run_folder(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Raise RunFolderInUse when a run may not start in `output_dir` (see the module docstring): a fresh run
    into a folder that holds a run, or `--resume latest` into a finished run that left no checkpoint to
    continue (it would start afresh over it). `--overwrite` allows both."""
    output_dir = Path(output_dir)
    if overwrite or not output_dir.is_dir():
        return
    found = _describe(output_dir)
    if found is None:
        return
    ways = f"pass a new --output-dir, or --overwrite to replace it (its {', '.join(RUN_ENTRIES[:3])} go)"
    if not resume:
        raise RunFolderInUse(f"--output-dir {output_dir} holds {found}: pass --resume latest to continue it, {ways}")
    if resume == "latest" and not list_checkpoints(output_dir):
        raise RunFolderInUse(f"--output-dir {output_dir} holds {found} but no checkpoint to continue: "
                             f"--resume latest would start afresh over it; {ways}")


def clear_run_folder(output_dir: str | Path) -> list[Path]:
    """`--overwrite`: remove the entries an earlier run wrote into `output_dir` (`RUN_ENTRIES`); return them."""
    removed = []
    for name in RUN_ENTRIES:
        path = Path(output_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed
