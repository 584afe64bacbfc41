"""Next-scale transformer, attention and text conditioning (see DESIGN.md, "Transformer")."""

from nextscale.transformer.attention import KVCache, attention, key_padding_mask, naive_attention
from nextscale.transformer.config import PRESETS, TransformerConfig
from nextscale.transformer.model import InferenceState, NextScaleTransformer
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
]
