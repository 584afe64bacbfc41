"""Invariants of the next-scale transformer: mask, causality, cache parity, text conditioning, I/O."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import trained_like

from nextscale.scales import block_causal_mask, scale_offsets, split_scales
from nextscale.transformer import (
    KVCache,
    NextScaleTransformer,
    PerScaleTexts,
    TransformerConfig,
    attention,
    key_padding_mask,
    naive_attention,
    start_after_switch,
)
from nextscale.transformer.text import TEXT_KEYS

# the module (the package re-exports its `attention` function under the same name)
attention_module = importlib.import_module("nextscale.transformer.attention")
SCALE_SIZES = (1, 2, 3)  # 14 tokens: every invariant shows up, and tests stay fast
TEXT_WIDTH = 12
TEXT_LENGTH = 6


def tiny_config(**overrides: object) -> TransformerConfig:
    settings: dict[str, object] = dict(
        depth=2, width=32, num_heads=4, scale_sizes=SCALE_SIZES, vocab_size=16, latent_dim=8, text_width=TEXT_WIDTH
    )
    settings.update(overrides)
    return TransformerConfig(**settings)  # type: ignore[arg-type]


def make_inputs(config: TransformerConfig, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(batch, TEXT_LENGTH, dtype=torch.bool)
    text_mask[0, 4:] = False  # row 0 has two padding positions
    return {
        "teacher_inputs": torch.randn(batch, config.num_tokens - 1, config.latent_dim, generator=generator),
        "text_tokens": torch.randn(batch, TEXT_LENGTH, TEXT_WIDTH, generator=generator),
        "text_mask": text_mask,
        "text_pooled": torch.randn(batch, TEXT_WIDTH, generator=generator),
    }


def per_scale(logits: torch.Tensor) -> list[torch.Tensor]:
    return split_scales(logits, SCALE_SIZES)


def test_block_causal_mask_small_case() -> None:
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(block_causal_mask((1, 2)), expected)
    model = NextScaleTransformer(tiny_config(scale_sizes=(1, 2)))
    assert torch.equal(model.attention_mask(), expected)
    assert torch.equal(model.attention_mask(1), expected[:1, :1])


def test_key_padding_mask_broadcasts_over_heads_and_queries() -> None:
    text_mask = torch.tensor([[True, True, False], [True, False, False]])
    mask = key_padding_mask(text_mask)
    assert mask.shape == (2, 1, 1, 3)
    assert torch.equal(mask.expand(2, 4, 5, 3)[1, 3, 4], torch.tensor([True, False, False]))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_sdpa_matches_naive_attention(qk_norm: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 14, 8, generator=generator) for _ in range(3))
    mask = block_causal_mask(SCALE_SIZES)
    scale = 1.0 if qk_norm else None
    expected = naive_attention(query, key, value, mask, scale)
    torch.testing.assert_close(attention(query, key, value, mask, scale, backend="sdpa"), expected)
    config = tiny_config(qk_norm=qk_norm)
    model, inputs = trained_like(config), make_inputs(config)
    naive = NextScaleTransformer(dataclasses.replace(config, attention_backend="naive")).eval()
    naive.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), naive(**inputs), atol=1e-5, rtol=1e-5)


def test_causality_by_perturbation() -> None:
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    with torch.no_grad():
        reference = per_scale(model(**inputs))
        # teacher_inputs hold the inputs of scales 1..K-1; chunk k - 1 produces scale k's tokens
        for scale in range(1, config.num_scales):
            perturbed = dict(inputs)
            chunks = [chunk.clone() for chunk in split_scales(inputs["teacher_inputs"], SCALE_SIZES[1:])]
            chunks[scale - 1] += 1.0
            perturbed["teacher_inputs"] = torch.cat(chunks, dim=1)
            logits = per_scale(model(**perturbed))
            for earlier in range(scale):
                torch.testing.assert_close(logits[earlier], reference[earlier], atol=1e-6, rtol=0)
            assert (logits[scale] - reference[scale]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qk_norm": True}, {"cross_attention": False}, {"scale_sizes": (2, 3, 5), "attention_backend": "naive"}],
    ids=["default", "qk_norm", "no_cross_attention", "first_scale_2x2_naive"],
)
def test_cached_incremental_logits_equal_teacher_forced(overrides: dict[str, object]) -> None:
    config = tiny_config(**overrides)
    model = trained_like(config)
    generator = torch.Generator().manual_seed(3)
    inputs = make_inputs(config)
    first = scale_offsets(config.scale_sizes)[1]
    inputs["teacher_inputs"] = torch.randn(2, config.num_tokens - first, config.latent_dim, generator=generator)
    with torch.no_grad():
        teacher_forced = split_scales(model(**inputs), config.scale_sizes)
        state = model.start(inputs["text_tokens"], inputs["text_mask"], inputs["text_pooled"])
        scale_inputs = [None, *split_scales(inputs["teacher_inputs"], config.scale_sizes[1:])]
        for scale, chunk in enumerate(scale_inputs):
            torch.testing.assert_close(
                model.forward_scale(state, scale, chunk), teacher_forced[scale], atol=1e-5, rtol=1e-5
            )
    # the documented memory formula: 2 * depth * b * L * width * bytes for the self-attention cache
    cache_bytes = sum(cache.num_bytes for cache in state.caches)
    assert cache_bytes == 2 * config.depth * 2 * config.num_tokens * config.width * 4


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True}, {"cross_attention": False}],
                         ids=["default", "qk_norm", "no_cross_attention"])
def test_switched_teacher_forced_pass_equals_the_cached_path_with_a_switch(overrides: dict[str, object]) -> None:
    """Per-scale prompts in one pass: each image switches to its second text at its own scale, and every
    scale's logits are those of the cached path that changes the condition at that scale."""
    config = tiny_config(scale_sizes=(1, 2, 3, 4), **overrides)
    model = trained_like(config)
    first, second = make_inputs(config, batch=3, seed=1), make_inputs(config, batch=3, seed=2)
    second["text_mask"] = second["text_mask"].flip(0)  # padding in another row than the first text's
    detail = {key: second[key] for key in TEXT_KEYS}
    switch = torch.tensor([1, 3, config.num_scales])  # the last image never switches
    text_of_scale = (torch.arange(config.num_scales) >= switch[:, None]).long()
    with torch.no_grad():
        switched = split_scales(model(**first, per_scale=PerScaleTexts([detail], text_of_scale)),
                                config.scale_sizes)
        plain = split_scales(model(**first), config.scale_sizes)
        scale_inputs = [None, *split_scales(first["teacher_inputs"], config.scale_sizes[1:])]
        for row, at in enumerate(switch.tolist()):
            text = {key: first[key][row:row + 1] for key in TEXT_KEYS}
            state = model.start(**text)
            for scale, chunk in enumerate(scale_inputs):
                if scale == at:  # the cached path's switch: new condition, earlier keys kept
                    fresh = model.start(**{key: value[row:row + 1] for key, value in detail.items()})
                    state = dataclasses.replace(fresh, caches=state.caches, next_scale=state.next_scale)
                logits = model.forward_scale(state, scale, None if chunk is None else chunk[row:row + 1])
                torch.testing.assert_close(logits[0], switched[scale][row], atol=1e-5, rtol=1e-5)
                if scale < at:  # before its switch an image is exactly the single-condition pass
                    torch.testing.assert_close(switched[scale][row], plain[scale][row], atol=1e-6, rtol=0)
                else:  # after it, the second condition changes the logits
                    assert (switched[scale][row] - plain[scale][row]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="scale 0 takes the first text"):
        model(**first, per_scale=PerScaleTexts([detail], torch.ones(3, config.num_scales, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        model(**first, per_scale=PerScaleTexts([detail], 2 * text_of_scale))
    with pytest.raises(ValueError, match="need text_of_scale"):
        model(**first, per_scale=PerScaleTexts([detail], None))


def cached_switch(model: NextScaleTransformer, scale_inputs: list[torch.Tensor | None], row: int,
                  before: dict[str, torch.Tensor], at: int, after: dict[str, torch.Tensor],
                  layout: dict[str, torch.Tensor], switched: bool = True) -> list[torch.Tensor]:
    """Row `row`'s logits per scale on the cached path: text `before` until scale `at`, then `after` with
    `layout` beside it (`start_after_switch`), the earlier keys kept."""
    def take(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value[row:row + 1] for key, value in text.items()}

    state, logits = model.start(**take(before)), []
    for scale, chunk in enumerate(scale_inputs):
        if scale == at:
            fresh = start_after_switch(model, take(after), take(layout), torch.tensor([switched]))
            state = dataclasses.replace(fresh, caches=state.caches, next_scale=state.next_scale)
        logits.append(model.forward_scale(state, scale, None if chunk is None else chunk[row:row + 1])[0])
    return logits


def test_layout_context_shows_the_first_text_beside_the_detail_text_after_a_switch() -> None:
    """With `layout_context` the tokens after an image's switch cross-attend to its first text and to its
    second text marked as detail; the cached path (`start` with the layout text) gives the same logits,
    and a row that does not switch is exactly the single-text pass."""
    config = tiny_config(scale_sizes=(1, 2, 3, 4), layout_context=True)
    model = trained_like(config)  # the detail marker is non-zero
    plain_model = NextScaleTransformer(dataclasses.replace(config, layout_context=False)).eval()
    plain_model.load_state_dict({k: v for k, v in model.state_dict().items() if k != "detail_marker"})
    first, second = make_inputs(config, batch=3, seed=1), make_inputs(config, batch=3, seed=2)
    second["text_mask"] = second["text_mask"].flip(0)
    layout, detail = ({key: inputs[key] for key in TEXT_KEYS} for inputs in (first, second))
    switch = torch.tensor([1, 2, config.num_scales])  # the last image never switches
    text_of_scale = (torch.arange(config.num_scales) >= switch[:, None]).long()
    with torch.no_grad():
        both = split_scales(model(**first, per_scale=PerScaleTexts([detail], text_of_scale)), config.scale_sizes)
        own_only = split_scales(plain_model(**first, per_scale=PerScaleTexts([detail], text_of_scale)),
                                config.scale_sizes)
        scale_inputs = [None, *split_scales(first["teacher_inputs"], config.scale_sizes[1:])]
        for row, at in enumerate(switch.tolist()):
            cached = cached_switch(model, scale_inputs, row, layout, at, detail, layout)
            for scale, logits in enumerate(cached):
                torch.testing.assert_close(logits, both[scale][row], atol=1e-5, rtol=1e-5)
                if scale >= at:  # the layout text changes what the detail text alone would give
                    assert (both[scale][row] - own_only[scale][row]).abs().max() > 1e-3
                else:
                    torch.testing.assert_close(both[scale][row], own_only[scale][row], atol=1e-6, rtol=0)
        # a row whose prompt did not change sees the layout text alone: the single-text logits
        unchanged = cached_switch(model, scale_inputs, 2, layout, 1, layout, layout, switched=False)
        for scale, logits in enumerate(unchanged):
            torch.testing.assert_close(logits, both[scale][2], atol=1e-5, rtol=1e-5)
    # training's layout: the scales before the switch see the image's own text, the later ones another
    # (unmarked) layout text beside the marked detail text, as the cached path started with that layout
    own = make_inputs(config, batch=3, seed=3)
    own_text = {key: own[key] for key in TEXT_KEYS}
    with torch.no_grad():
        trained = split_scales(model(**first | own_text, per_scale=PerScaleTexts(
            [layout, detail], 2 * text_of_scale, layout_text=torch.ones(3, dtype=torch.long))), config.scale_sizes)
        for row, at in enumerate(switch.tolist()):
            for scale, logits in enumerate(cached_switch(model, scale_inputs, row, own_text, at, detail, layout)):
                torch.testing.assert_close(logits, trained[scale][row], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout_text must be"):
        model(**first, per_scale=PerScaleTexts([detail], text_of_scale, layout_text=torch.full((3,), 2)))
    with pytest.raises(ValueError, match="switched"):
        start_after_switch(model, detail, layout, None)
    with pytest.raises(ValueError, match="needs cross_attention"):
        tiny_config(layout_context=True, cross_attention=False)


def test_inference_builds_no_attention_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scale-by-scale sampling attends over the KV cache without any (L, L) mask."""
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    assert all(buffer.ndim < 2 for buffer in model.buffers())  # no mask held by the model
    masks: list[torch.Tensor | None] = []
    real_attention = attention_module.attention

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        masks.append(args[3] if len(args) > 3 else kwargs.get("mask"))  # type: ignore[arg-type]
        return real_attention(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attention_module, "attention", recording)
    monkeypatch.setattr(model, "attention_mask", lambda *args: pytest.fail("mask built at inference"))
    scale_inputs = split_scales(torch.randn(2, config.num_tokens - 1, config.latent_dim), config.scale_sizes[1:])
    with torch.no_grad():
        state = model.start(inputs["text_tokens"], inputs["text_mask"], inputs["text_pooled"])
        for scale, chunk in enumerate([None, *scale_inputs]):
            model.forward_scale(state, scale, chunk)
    assert masks and all(mask is None or mask.shape[-2] == 1 for mask in masks)  # None or text padding only


def class_config(**overrides: object) -> TransformerConfig:
    """A class-conditional tiny model with VAR's attention (qk_norm, no key bias)."""
    settings: dict[str, object] = dict(num_classes=5, cross_attention=False, qk_norm=True, key_bias=False)
    settings.update(overrides)
    return tiny_config(**settings)


def test_class_conditional_cached_logits_equal_teacher_forced() -> None:
    config = class_config()
    model = trained_like(config)
    generator = torch.Generator().manual_seed(3)
    teacher_inputs = torch.randn(3, config.num_tokens - 1, config.latent_dim, generator=generator)
    labels = torch.tensor([0, 4, config.null_class])  # the null class is a valid label: guidance's branch
    with torch.no_grad():
        teacher_forced = split_scales(model(teacher_inputs, labels=labels), config.scale_sizes)
        state = model.start(labels=labels)
        scale_inputs = [None, *split_scales(teacher_inputs, config.scale_sizes[1:])]
        for scale, chunk in enumerate(scale_inputs):
            torch.testing.assert_close(model.forward_scale(state, scale, chunk), teacher_forced[scale], atol=1e-5,
                                       rtol=1e-5)
    # each label conditions its own row: the start token and the AdaLN modulation both see it
    assert not torch.allclose(teacher_forced[0][0], teacher_forced[0][1], atol=1e-3)
    assert not any("cross_attention" in name for name in model.state_dict())


def test_key_bias_off_keeps_keys_unbiased_and_still_learns_query_and_value_biases() -> None:
    model = trained_like(class_config())
    attention_layer = model.blocks[0].self_attention
    assert attention_layer.qkv.bias is None and attention_layer.query_bias is not None
    x = torch.zeros(1, 3, 32)
    query, key, value = attention_layer.project_qkv(x).chunk(3, dim=-1)  # a zero input shows the biases
    assert not key.any() and torch.equal(query[0, 0], attention_layer.query_bias)
    assert torch.equal(value[0, 0], attention_layer.value_bias)


def test_condition_kind_errors_are_helpful() -> None:
    class_model, text_model = NextScaleTransformer(class_config()), NextScaleTransformer(tiny_config())
    teacher_inputs = torch.zeros(2, 13, 8)
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        class_model(teacher_inputs, text_pooled=torch.zeros(2, TEXT_WIDTH))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\]"):
        class_model(teacher_inputs, labels=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"labels must be \(b,\) int64"):
        class_model.start()
    with pytest.raises(ValueError, match="text-conditioned: pass text, not class labels"):
        text_model(teacher_inputs, labels=torch.tensor([0, 1]))


def test_forward_scale_rejects_out_of_order_and_bad_inputs() -> None:
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    state = model.start(inputs["text_tokens"], inputs["text_mask"], inputs["text_pooled"])
    with pytest.raises(ValueError, match="in order"):
        model.forward_scale(state, 1, torch.zeros(2, 4, config.latent_dim))
    with pytest.raises(ValueError, match="scale_inputs=None"):
        model.forward_scale(state, 0, torch.zeros(2, 1, config.latent_dim))
    model.forward_scale(state, 0)
    with pytest.raises(ValueError, match=r"\(2, 4, 8\)"):
        model.forward_scale(state, 1, torch.zeros(2, 9, config.latent_dim))
    with pytest.raises(ValueError, match="appending"):
        KVCache(max_length=3).append(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))


def test_text_changes_the_output() -> None:
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    with torch.no_grad():
        reference = model(**inputs)
        other_tokens = model(**{**inputs, "text_tokens": inputs["text_tokens"].flip(0)})
        other_pooled = model(**{**inputs, "text_pooled": inputs["text_pooled"] + 1.0})
    assert (other_tokens - reference).abs().max() > 1e-3
    assert (other_pooled - reference).abs().max() > 1e-3


def test_padded_text_positions_are_ignored() -> None:
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    padding = ~inputs["text_mask"]
    assert padding.any()
    perturbed = inputs["text_tokens"] + 100.0 * padding.unsqueeze(-1)  # change only masked positions
    with torch.no_grad():
        reference = model(**inputs)
        changed = model(**{**inputs, "text_tokens": perturbed})
        state = model.start(perturbed, inputs["text_mask"], inputs["text_pooled"])
        first_scale = model.forward_scale(state, 0)
    torch.testing.assert_close(changed, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(first_scale, reference[:, :1], atol=1e-5, rtol=1e-5)


def test_input_errors_are_helpful() -> None:
    config = tiny_config()
    model, inputs = trained_like(config), make_inputs(config)
    with pytest.raises(ValueError, match="teacher_inputs must be"):
        model(**{**inputs, "teacher_inputs": inputs["teacher_inputs"][:, :-1]})
    with pytest.raises(TypeError, match="bool"):
        model(**{**inputs, "text_mask": inputs["text_mask"].long()})
    with pytest.raises(ValueError, match="text_pooled must be"):
        model(**{**inputs, "text_pooled": inputs["text_pooled"][:, :5]})
    no_text = inputs["text_mask"].clone()
    no_text[1] = False
    with pytest.raises(ValueError, match="real token"):
        model(**{**inputs, "text_mask": no_text})


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    config = tiny_config(width=64, vocab_size=32)
    model = NextScaleTransformer(config).train()
    inputs = make_inputs(config, batch=4)
    codes = torch.randint(0, config.vocab_size, (4, config.num_tokens))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        loss = F.cross_entropy(model(**inputs).flatten(0, 1), codes.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05


def test_training_mode_with_dropout_and_drop_path_backpropagates() -> None:
    config = tiny_config(dropout=0.1, attention_dropout=0.1, drop_path=0.2, qk_norm=True)
    model = NextScaleTransformer(config).train()
    logits = model(**make_inputs(config))
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_save_load_is_bit_exact(tmp_path) -> None:
    config = tiny_config(qk_norm=True)
    model, inputs = trained_like(config), make_inputs(config)
    model.save_pretrained(tmp_path / "transformer")
    loaded = NextScaleTransformer.from_pretrained(tmp_path / "transformer")
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))


def test_from_pretrained_builds_no_random_init(tmp_path) -> None:
    """Loading takes the saved tensors as the parameters: the global random state is not consumed by an
    initialisation the weights overwrite, and the model is whole (no meta tensors), float32 and trainable
    even from float16 weights."""
    config = tiny_config(layout_context=True)
    model = trained_like(config)
    model.save_pretrained(tmp_path / "transformer", dtype=torch.float16)
    before = torch.get_rng_state()
    loaded = NextScaleTransformer.from_pretrained(tmp_path / "transformer")
    assert torch.equal(torch.get_rng_state(), before)
    tensors = list(loaded.parameters()) + list(loaded.buffers())
    assert not any(t.is_meta for t in tensors)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.level, model.level)  # a non-persistent buffer, computed at construction
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.half().float()), name


def test_init_starts_blocks_as_identity_and_head_small() -> None:
    model = NextScaleTransformer(tiny_config())
    for block in model.blocks:
        assert not block.modulation[-1].weight.any() and not block.modulation[-1].bias.any()
    assert model.head.weight.std() < 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"scale_sizes": (1, 3, 2)}, "strictly increasing"),
        ({"dropout": 1.5}, "probability"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"depth": 0}, "depth must be a positive"),
        ({"num_classes": 10}, "set cross_attention=False"),
        ({"num_classes": -1}, "num_classes must be >= 0"),
    ],
)
def test_bad_config_raises_helpful_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_presets() -> None:
    var16 = TransformerConfig.var(16)
    assert (var16.width, var16.num_heads, var16.head_dim) == (1024, 16, 64)
    assert var16.qk_norm and not var16.key_bias  # VAR's attn_l2_norm and zero_k_bias
    demo = TransformerConfig.preset("demo")
    assert (demo.width, demo.depth, demo.num_heads, demo.num_tokens) == (256, 6, 4, 130)
    assert TransformerConfig.preset("tiny", vocab_size=64).vocab_size == 64
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.preset("huge")
    assert NextScaleTransformer(TransformerConfig.preset("tiny")).num_parameters() > 0
