"""The web UI's settings: one frozen dataclass, parsed from the command line by tyro."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class UploadLimits:
    """What an uploaded image may be: checked before it is decoded (see `nextscale.ui.uploads`)."""

    max_bytes: int = 10 * 1024 * 1024
    """Largest accepted file, in bytes (10 MiB)."""
    max_pixels: int = 16_000_000
    """Largest accepted width x height, read from the header before decoding (decompression-bomb guard)."""
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
    """Accepted image formats, as Pillow names them (the file's content decides, not its name)."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"upload limits must be >= 1, got max_bytes={self.max_bytes}, "
                             f"max_pixels={self.max_pixels}")


@dataclass(frozen=True)
class UIConfig:
    """Serve the nextscale web UI on this machine (Gradio): generate, edit, mix prompts, zoom."""

    host: str = "127.0.0.1"
    """Address to bind; the default keeps the page local to this machine."""
    port: int = 7860
    """Port to serve on; 0 picks a free one."""
    checkpoint: str | None = None
    """The pipeline shown first: a directory written by train_var.py or a hub id; default: the bundled demo."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the models run; auto = cuda when available."""
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = "float32"
    """Weights and activations dtype; int8: the transformer's linear layers in int8, a CPU path
    (docs/experiments/int8-and-fast-decoder.md). The decoder runs as sample.py's --decoder-dtype auto."""
    threads: int = 1
    """torch's intra-op CPU threads; 0: torch's default (one per core). One is the default: on a small CPU
    shared with other busy processes, spinning threads compete (docs/experiments/web-ui-load.md)."""
    concurrency: int = 1
    """Samplings that may run at the same time on one model; further requests wait in the queue."""
    max_queue: int = 64
    """Requests that may wait in the queue; beyond it the page says the server is busy."""
    max_images: int = 16
    """Most images one request may ask for."""
    max_loaded_models: int = 2
    """Pipelines kept in memory; the least recently used one is dropped beyond it."""
    share: bool = False
    """Ask Gradio for a public share link (off: nothing leaves this machine)."""
    open_browser: bool = False
    """Open the page in the default browser once it is served."""
    upload: UploadLimits = UploadLimits()
    """Limits on uploaded images."""

    @property
    def sampling_workers(self) -> int:
        """Queue workers for sampling events: every loaded model may run `concurrency` samplings at once;
        each model's own slots do the per-model limiting (`LoadedModel.slot`)."""
        return self.concurrency * self.max_loaded_models

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.concurrency < 1 or self.max_queue < 1 or self.max_images < 1 or self.max_loaded_models < 1:
            raise ValueError("concurrency, max_queue, max_images and max_loaded_models must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
