"""The `nextscale-ui` console script (also `python -m nextscale.ui`, `make ui`).

nextscale-ui                      # http://127.0.0.1:7860, the bundled demo model
nextscale-ui --checkpoint runs/var/pipeline --port 8000 --concurrency 2

The first model loads in a background thread once the page is served: the page is up sooner, and a
request that comes before the model is ready waits for it. Loading it while the web framework was
imported, or while the page was built, was slower (both are mostly Python, holding the GIL;
docs/experiments/web-ui-load.md has the measurements).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import tyro

from nextscale.errors import fail
from nextscale.ui.config import UIConfig

if TYPE_CHECKING:
    from nextscale.ui.models import ModelRegistry

LOGGER = logging.getLogger("nextscale.ui")


def check_checkpoint(checkpoint: str | None) -> None:
    """The quick checks of --checkpoint that need no model code: a local path must hold pipeline.json."""
    if checkpoint is None or checkpoint.strip() in ("", "demo"):
        return
    path = Path(checkpoint).expanduser()
    looks_like_repo = checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~"))
    if path.exists() and not (path / "pipeline.json").is_file():
        fail(f"--checkpoint {checkpoint} has no pipeline.json: expected a sampling pipeline "
                         "(tokenizer/, transformer/, pipeline.json) as written by train_var.py")
    if not path.exists() and not looks_like_repo:
        fail(f"--checkpoint {checkpoint} does not exist")


def load_in_background(registry: ModelRegistry, checkpoint: str | None) -> threading.Thread:
    """Load the first model in a thread (a request for it meanwhile waits behind the registry's lock)."""

    def load() -> None:
        try:
            model = registry.get(checkpoint)
        except Exception as error:  # the page shows it on every request for that model
            LOGGER.error("cannot load the first model: %s", error)
            return
        LOGGER.info("model %s loaded (%d px, scales %s)", model.name, model.image_size, model.scale_sizes)

    thread = threading.Thread(target=load, name="nextscale-ui-preload", daemon=True)
    thread.start()
    return thread


def cli() -> None:
    config = tyro.cli(UIConfig)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    check_checkpoint(config.checkpoint)
    try:
        import torch

        from nextscale.ui.app import serve
        from nextscale.ui.models import ModelRegistry

        if config.threads:
            torch.set_num_threads(config.threads)
        registry = ModelRegistry(config.device, config.dtype, config.concurrency, config.max_loaded_models)
        serve(config, registry, on_serving=lambda: load_in_background(registry, config.checkpoint))
    except (ValueError, OSError) as error:  # a device that is missing, a port in use: one line, no traceback
        fail(str(error))
