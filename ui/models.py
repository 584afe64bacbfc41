"""The pipelines the page can sample from: loaded on demand, kept (least recently used first out), one
queue slot per concurrent sampling on each model."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nextscale import devices
from nextscale.sampling.pipeline import DEMO_PIPELINE, Pipeline, load_pipeline
from nextscale.sampling.precision import DTYPES as PRECISIONS

DTYPES = PRECISIONS  # the dtype names sample.py's --dtype takes ("int8" included)
DEMO_NAME = "demo"


class ModelError(ValueError):
    """A pipeline that cannot be loaded; the message says why and is shown in the page."""


def resolve_device(device: str) -> torch.device:
    try:
        return devices.resolve_device(device)
    except ValueError as error:
        raise ModelError(str(error)) from None


def checkpoint_key(name: str | None) -> str | None:
    """The canonical checkpoint of a name typed in the page: None for the bundled demo ('' or 'demo'),
    else the resolved path of an existing directory, else the text as it is (a hub id)."""
    text = (name or "").strip()
    if text in ("", DEMO_NAME) or Path(text).expanduser().resolve() == DEMO_PIPELINE.resolve():
        return None
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


ADAPTER_MARK = " + adapter "
"""How a model name carries a LoRA adapter: "PIPELINE + adapter DIR @ SCALE" (`with_adapter`)."""


def with_adapter(name: str | None, adapter: str | None, scale: float = 1.0) -> str | None:
    """The name of pipeline `name` with the LoRA adapter at `adapter` on it at `scale` (no adapter: `name`)."""
    if not (adapter or "").strip():
        return name
    path = Path(adapter.strip()).expanduser()
    return f"{(name or '').strip() or DEMO_NAME}{ADAPTER_MARK}{path.resolve() if path.exists() else path} @ {scale:g}"


def split_adapter(name: str | None) -> tuple[str | None, str | None, float]:
    """`with_adapter`'s inverse: (pipeline name, adapter directory or None, scale)."""
    if not name or ADAPTER_MARK not in name:
        return name, None, 1.0
    base, _, rest = name.partition(ADAPTER_MARK)
    adapter, _, scale = rest.rpartition(" @ ")
    try:
        return base, adapter or rest, float(scale) if adapter else 1.0
    except ValueError:
        raise ModelError(f"adapter scale must be a number, got {scale!r}") from None


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@dataclass
class LoadedModel:
    """One pipeline in memory and the slots that bound how many samplings run on it at once."""

    checkpoint: str | None
    """Its checkpoint as `nextscale-sample --checkpoint` takes it; None for the bundled demo."""
    pipeline: Pipeline
    dtype: str
    slots: threading.BoundedSemaphore
    adapter: str | None = None
    """The LoRA adapter directory on its transformer, if any."""
    adapter_scale: float = 1.0

    @property
    def name(self) -> str:
        base = DEMO_NAME if self.checkpoint is None else self.checkpoint
        return with_adapter(base, self.adapter, self.adapter_scale) or base

    @property
    def image_size(self) -> int:
        return self.pipeline.tokenizer.config.image_size

    @property
    def class_conditional(self) -> bool:
        """Whether the condition is a class label (then prompts are class numbers)."""
        return self.pipeline.transformer.config.class_conditional

    def require_text(self, tab: str) -> None:
        """ValueError for the tabs that need prompts when this model takes class labels."""
        if self.class_conditional:
            raise ValueError(f"the {tab} tab needs a text-conditioned pipeline; {self.name} takes class labels "
                             "(use the Generate tab, one class number per line)")

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        return tuple(self.pipeline.transformer.config.scale_sizes)

    @contextmanager
    def slot(self) -> Iterator[float]:
        """Hold one sampling slot of this model; yields the seconds spent waiting for it."""
        waited = time.perf_counter()
        with self.slots:
            yield time.perf_counter() - waited

    def conditioning(self) -> str:
        encoder = self.pipeline.text_encoder
        if self.class_conditional or encoder is None:
            return f"class labels 0 to {self.pipeline.transformer.config.num_classes - 1}"
        return (f"text: {encoder.config.name_or_path} ({encoder.kind}, width {encoder.width}, "
                f"{encoder.max_length} tokens)")

    def info(self) -> dict[str, object]:
        """What the Model panel shows."""
        tokenizer, transformer = self.pipeline.tokenizer, self.pipeline.transformer
        scales = self.scale_sizes
        return {
            "checkpoint": self.name,
            "directory": str(self.pipeline.directory) if self.pipeline.directory else None,
            "conditioning": self.conditioning(),
            "image size": f"{self.image_size} x {self.image_size} px",
            "scales": " ".join(f"{size}x{size}" for size in scales),
            "tokens per image": sum(size * size for size in scales),
            "codebook": tokenizer.config.vocab_size,
            "transformer": f"depth {transformer.config.depth}, width {transformer.config.width}, "
            f"{count_parameters(transformer) / 1e6:.2f} M parameters",
            "tokenizer": f"{count_parameters(tokenizer) / 1e6:.2f} M parameters",
            "device": str(self.pipeline.device),
            "dtype": self.dtype,
            **({"adapter": f"{self.adapter} at scale {self.adapter_scale:g}"} if self.adapter else {}),
        }


class ModelRegistry:
    """Pipelines by checkpoint, loaded once and shared by every request; at most `capacity` in memory."""

    def __init__(self, device: str, dtype: str, concurrency: int, capacity: int) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        self.concurrency = concurrency
        self.capacity = capacity
        self._models: OrderedDict[str | None, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # loads are serialised: two requests for one model load it once

    def get(self, name: str | None) -> LoadedModel:
        """The model of `name` (None, '' or 'demo': the bundled demo; a pipeline directory; a hub id)."""
        base, adapter, scale = split_adapter(name)
        checkpoint = checkpoint_key(base)
        key = checkpoint if adapter is None else f"{checkpoint}{ADAPTER_MARK}{adapter} @ {scale:g}"
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            try:
                pipeline = load_pipeline(checkpoint, self.device, DTYPES[self.dtype], adapter=adapter,
                                         adapter_scale=scale, decoder_dtype="auto")  # as sample.py decodes
            except (FileNotFoundError, ValueError, OSError) as error:
                raise ModelError(f"cannot load {name or DEMO_NAME!r}: {error}") from error
            model = LoadedModel(checkpoint, pipeline, self.dtype, threading.BoundedSemaphore(self.concurrency),
                                adapter, scale)
            self._models[key] = model
            while len(self._models) > self.capacity:  # a request still sampling on it keeps its reference
                self._models.popitem(last=False)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return [model.name for model in self._models.values()]
