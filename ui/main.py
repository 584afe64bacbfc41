"""The `nextscale-ui` console script (also `python -m nextscale.ui`, `make ui`).

nextscale-ui                      # http://127.0.0.1:7860, the bundled demo model
nextscale-ui --checkpoint runs/var/pipeline --port 8000 --concurrency 2

The first model loads in a background thread while the page is built and starts serving: the page is up
sooner, and a request that comes before the model is ready waits for it. The web framework is imported
before the load starts: importing it during the load was slower (both are mostly Python, holding the GIL;
README, "The web UI", has the measurements).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import tyro

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
        raise SystemExit(f"error: --checkpoint {checkpoint} has no pipeline.json: expected a sampling pipeline "
                         "(tokenizer/, transformer/, pipeline.json) as written by train_var.py")
    if not path.exists() and not looks_like_repo:
        raise SystemExit(f"error: --checkpoint {checkpoint} does not exist")


class Preload:
    """Creates the model registry and loads the first model in a thread; `registry()` waits only for the
    registry (a request for the model then waits for the load itself, behind the registry's lock)."""

    def __init__(self, config: UIConfig) -> None:
        self._config = config
        self._ready = threading.Event()
        self._registry: ModelRegistry | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="nextscale-ui-preload", daemon=True).start()

    def _run(self) -> None:
        try:
            import torch

            from nextscale.ui.models import ModelRegistry

            config = self._config
            if config.threads:
                torch.set_num_threads(config.threads)
            registry = ModelRegistry(config.device, config.dtype, config.concurrency, config.max_loaded_models)
        except BaseException as error:  # handed to the main thread
            self._error = error
            self._ready.set()
            return
        self._registry = registry
        self._ready.set()
        try:
            model = registry.get(config.checkpoint)
        except Exception as error:  # the page shows it on every request for that model
            LOGGER.error("cannot load the first model: %s", error)
            return
        LOGGER.info("model %s loaded (%d px, scales %s)", model.name, model.image_size, model.scale_sizes)

    def registry(self) -> ModelRegistry:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._registry is not None
        return self._registry


def cli() -> None:
    config = tyro.cli(UIConfig)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    check_checkpoint(config.checkpoint)
    from nextscale.ui.app import serve  # the web framework and torch: imported first, they compete for the GIL

    preload = Preload(config)
    try:
        serve(config, preload.registry())
    except (ValueError, OSError) as error:  # a device that is missing, a port in use: one line, no traceback
        raise SystemExit(f"error: {error}") from error
