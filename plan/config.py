"""`PlanConfig`: what the planner reads, and the model it plans for.

The planner takes train_var.py's options as they are (a recipe's `var:` section with --config, a
--preset, --model.* and every other option, resolved by `nextscale.train.presets`), plus the machine and
the run's length. The transformer's scales, codebook and latent come from its tokenizer: the --tokenizer
directory's config.json when it exists (what the training will read), else the same recipe's or preset's
`tokenizer:` section, else the size preset of --data.image-size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from nextscale.tokenizer import TokenizerConfig
from nextscale.train.var_loop import VarTrainConfig
from nextscale.transformer import TransformerConfig
from nextscale.transformer.text import DEFAULT_MAX_LENGTH, OFFLINE_MAX_LENGTH, OFFLINE_TEXT_ENCODER

KNOWN_TEXT_ENCODERS: dict[str, tuple[int, int, int | None]] = {
    OFFLINE_TEXT_ENCODER: (384, OFFLINE_MAX_LENGTH, 22_713_216),
    "openai/clip-vit-large-patch14": (768, DEFAULT_MAX_LENGTH, 123_060_480),
}
"""Text encoders the planner knows without loading them: (width, default prompt length, parameters)."""


@dataclass(frozen=True)
class PlanConfig(VarTrainConfig):
    """Plan a transformer training before running it: parameters, tokens and FLOPs per image, memory per
    device (DDP and FSDP, with and without activation checkpointing), the largest micro-batch that fits,
    and the hours at a stated utilisation. Every train_var.py option applies (--config recipes/NAME.yaml,
    --preset, --model.*, --batch-size per GPU, --gradient-accumulation); the run's length is --images x
    --epochs, or by default the recipe's --steps of --batch-size x --gpus x --gradient-accumulation. How
    the estimates compare with measured runs: docs/experiments/planner-validation.md."""

    HELP_FIRST: ClassVar[tuple[str, ...]] = (
        "gpus", "gpu_memory_gb", "gpu_tflops", "mfu", "images", "epochs", "batch_size", "gradient_accumulation",
        "steps", "model.depth", "model.width", "model.num_heads", "condition", "text_encoder", "tokenizer",
        "mixed_precision", "num_classes", "text_width", "memory_margin",
    )

    gpus: int = 8
    """Devices the run trains on (processes of `accelerate launch`)."""
    gpu_memory_gb: float = 80.0
    """Memory of one device, in GB (10^9 bytes)."""
    gpu_tflops: float = 312.0
    """Dense bf16 matrix-multiply peak of one device in TFLOP/s (an A100: 312)."""
    mfu: float = 0.4
    """Model FLOPs utilisation the hours assume: the counted FLOPs over time x devices x peak."""
    images: int | None = None
    """Training images per epoch (with --epochs; ImageNet: 1281167). None: the run is --steps long."""
    epochs: float | None = None
    """Passes over --images."""
    num_classes: int = 1000
    """Classes of a class-conditional model (--condition class; ImageNet's 1000)."""
    text_width: int | None = None
    """Width of the text encoder's states, for an encoder the planner does not know (None: known ones)."""
    memory_margin: float = 0.1
    """Fraction of device memory held back from the micro-batch search (CUDA context, allocator caching
    and fragmentation, kernel workspaces)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gpus < 1:
            raise ValueError(f"--gpus must be >= 1, got {self.gpus}")
        for name in ("gpu_memory_gb", "gpu_tflops"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"--mfu is a fraction of the peak in (0, 1], got {self.mfu}")
        if (self.images is None) != (self.epochs is None):
            raise ValueError("--images and --epochs go together (the run is images x epochs); give both or neither")
        if self.images is not None and (self.images < 1 or self.epochs is None or not self.epochs > 0):
            raise ValueError(f"--images must be >= 1 and --epochs > 0, got {self.images} and {self.epochs}")
        if self.num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {self.num_classes}")
        if self.text_width is not None and self.text_width < 1:
            raise ValueError(f"--text-width must be >= 1, got {self.text_width}")
        if not 0 <= self.memory_margin < 1:
            raise ValueError(f"--memory-margin is a fraction in [0, 1), got {self.memory_margin}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.gpus * self.gradient_accumulation

    @property
    def trained_images(self) -> float:
        """Images the run trains on: images x epochs, or steps x the global batch."""
        if self.images is not None and self.epochs is not None:
            return self.images * self.epochs
        return self.steps * self.global_batch

    @property
    def precision(self) -> str:
        """The autocast the run uses on a GPU: --mixed-precision, auto being bf16 (GPUs that have it)."""
        return "bf16" if self.mixed_precision == "auto" else self.mixed_precision


@dataclass(frozen=True)
class PlannedModel:
    """The transformer to plan for, its frozen companions and where they came from."""

    shape: TransformerConfig
    text_length: int
    tokenizer: TokenizerConfig
    tokenizer_source: str
    text_parameters: int | None
    """Parameters of the frozen text encoder (None: not known to the planner)."""


def tokenizer_config(config: PlanConfig, argv: list[str]) -> tuple[TokenizerConfig, str]:
    """The tokenizer the run's transformer is shaped by, and where it was read."""
    from nextscale.checkpoint import config_from_dict, read_json_object
    from nextscale.train.presets import load_recipe, option_value, tokenizer_defaults

    saved = Path(config.tokenizer) / "config.json"
    if saved.is_file():
        return config_from_dict(TokenizerConfig, read_json_object(saved)), str(saved)
    recipe, preset = option_value(argv, "--config"), option_value(argv, "--preset")
    if (recipe is not None and load_recipe(recipe)["tokenizer"]) or preset is not None:
        chosen = [arg for option, value in (("--config", recipe), ("--preset", preset)) if value is not None
                  for arg in (option, value)]
        resolved = tokenizer_defaults(chosen)
        if resolved is not None:
            where = f"the tokenizer: section of {recipe}" if recipe else f"--preset {preset}"
            return resolved.model, where
    size = config.data.image_size
    return TokenizerConfig.for_image_size(size), f"the {size} px size preset (no {saved})"


def planned_model(config: PlanConfig, argv: list[str]) -> PlannedModel:
    """The transformer the training would build from `config` (its tokenizer's scales, codebook and latent;
    the text encoder's width, or the classes), with the text length and the frozen parts."""
    tokenizer, source = tokenizer_config(config, argv)
    fitted = dataclasses.replace(config.model, scale_sizes=tokenizer.scale_sizes, vocab_size=tokenizer.vocab_size,
                                 latent_dim=tokenizer.latent_dim)
    if config.condition == "class":
        shape = dataclasses.replace(fitted, num_classes=config.num_classes, cross_attention=False)
        return PlannedModel(shape, 0, tokenizer, source, 0)
    known = KNOWN_TEXT_ENCODERS.get(config.text_encoder) or local_text_encoder(config.text_encoder)
    width = config.text_width or (known[0] if known else None)
    if width is None:
        raise ValueError(f"the planner does not know the width of --text-encoder {config.text_encoder}: pass "
                         f"--text-width (its hidden size) and --text-max-length")
    length = config.text_max_length or (known[1] if known else DEFAULT_MAX_LENGTH)
    shape = dataclasses.replace(fitted, text_width=width)
    return PlannedModel(shape, length if shape.cross_attention else 0, tokenizer, source,
                        known[2] if known else None)


def local_text_encoder(path: str) -> tuple[int, int, int | None] | None:
    """(width, prompt length, None) of a local transformers text model directory, from its config.json."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    values = json.loads(file.read_text())
    values = values.get("text_config", values)
    width = values.get("hidden_size") or values.get("d_model")
    return (int(width), DEFAULT_MAX_LENGTH, None) if width else None
