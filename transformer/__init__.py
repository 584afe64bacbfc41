"""Next-scale transformer, attention, text conditioning and per-scale prompts (docs/design.md)."""

from nextscale.transformer.attention import KVCache, attention, key_padding_mask, naive_attention
from nextscale.transformer.config import PRESETS, TransformerConfig
from nextscale.transformer.model import InferenceState, NextScaleTransformer
from nextscale.transformer.per_scale import PerScaleTexts, start_after_switch
from nextscale.transformer.text import (
    OFFLINE_TEXT_ENCODER,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    load_text_cache,
    precompute_text_embeddings,
    save_text_cache,
)

__all__ = [
    "OFFLINE_TEXT_ENCODER",
    "PRESETS",
    "InferenceState",
    "KVCache",
    "NextScaleTransformer",
    "PerScaleTexts",
    "TextEmbedding",
    "TextEncoder",
    "TextEncoderConfig",
    "TransformerConfig",
    "attention",
    "key_padding_mask",
    "load_text_cache",
    "naive_attention",
    "precompute_text_embeddings",
    "save_text_cache",
    "start_after_switch",
]
