"""Shared fixtures: a tiny random sampling pipeline written and loaded through the real code path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the test suite may touch the network

import pytest
import torch

from nextscale.sampling.pipeline import Pipeline, load_pipeline, write_pipeline
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.transformer import NextScaleTransformer, TransformerConfig

TINY_WORDS = ["a", "man", "woman", "with", "beard", "glasses", "red", "blue", "hair", "background", "portrait"]
TINY_TEXT_WIDTH = 32
TINY_TEXT_MAX_LENGTH = 12


def tiny_tokenizer_config(**overrides: object) -> TokenizerConfig:
    """16 px images, a 4x4 latent, scales (1, 2, 4) = 21 tokens, 64 codes."""
    settings: dict[str, object] = dict(
        image_size=16,
        latent_dim=8,
        vocab_size=64,
        scale_sizes=(1, 2, 4),
        channel_mult=(1, 2, 2),
        encoder_channels=16,
        decoder_channels=16,
        decoder_res_blocks=1,
        norm_groups=8,
        num_phi=3,
    )
    settings.update(overrides)
    return TokenizerConfig(**settings)  # type: ignore[arg-type]


def tiny_transformer(tokenizer_config: TokenizerConfig, seed: int = 0, **overrides: object) -> NextScaleTransformer:
    """A tiny transformer whose zero-initialised AdaLN gates and small head are perturbed, so that the
    self-attention, the text and the guidance all change the logits (a fresh init would hide them)."""
    settings: dict[str, object] = dict(
        scale_sizes=tokenizer_config.scale_sizes,
        vocab_size=tokenizer_config.vocab_size,
        latent_dim=tokenizer_config.latent_dim,
        text_width=TINY_TEXT_WIDTH,
    )
    settings.update(overrides)
    return trained_like(TransformerConfig.preset("tiny", **settings), seed)


def trained_like(config: TransformerConfig, seed: int = 0) -> NextScaleTransformer:
    """A model whose zero-initialised AdaLN gates are non-zero, so every path carries signal."""
    torch.manual_seed(seed)
    model = NextScaleTransformer(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def write_tiny_bert(directory: Path, words: list[str], num_layers: int = 1, max_positions: int = 32) -> Path:
    """Save a tiny random BERT text encoder (width 32) with a handwritten word-piece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_WIDTH,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_clip(directory: Path, words: list[str], max_positions: int = 48, layers: int = 1) -> Path:
    """Save a tiny random CLIP text encoder (width 32) with a byte-level BPE vocabulary in which every word of
    `words` is one token (CLIP's reversible byte -> unicode table, GPT-2's `bytes_to_unicode`)."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [byte for byte in range(256) if byte not in printable]
    alphabet = [chr(c) for c in printable] + [chr(256 + index) for index in range(len(extra))]
    vocab = {symbol: index for index, symbol in enumerate(alphabet + [s + "</w>" for s in alphabet])}
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
                vocab[pieces[0] + pieces[1]] = len(vocab)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TINY_TEXT_WIDTH, intermediate_size=64,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=max_positions,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The text encoder of the tiny pipelines: one layer, the portrait words."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), TINY_WORDS)


PipelineWriter = Callable[..., Path]


@pytest.fixture(scope="session")
def write_tiny_pipeline(tiny_bert_dir: Path) -> PipelineWriter:
    """`write(directory, tokenizer_overrides=None, transformer_overrides=None) -> directory`: a pipeline
    (pipeline.json, tokenizer/, transformer/) of tiny random models; the transformer's overrides may
    contradict the tokenizer (to test the compatibility errors)."""

    def write(
        directory: Path, tokenizer_overrides: dict | None = None, transformer_overrides: dict | None = None
    ) -> Path:
        tokenizer_config = tiny_tokenizer_config(**(tokenizer_overrides or {}))
        torch.manual_seed(0)
        tokenizer = MultiScaleVQVAE(tokenizer_config).eval()
        transformer = tiny_transformer(tokenizer_config, **(transformer_overrides or {}))
        return write_pipeline(directory, tokenizer, transformer, str(tiny_bert_dir), TINY_TEXT_MAX_LENGTH)

    return write


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_pipeline: PipelineWriter) -> Path:
    """The default tiny pipeline directory (scales (1, 2, 4), 64 codes, text width 32)."""
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_pipeline_dir: Path) -> Pipeline:
    """The tiny pipeline loaded with `load_pipeline` on the CPU in float32."""
    return load_pipeline(tiny_pipeline_dir)
