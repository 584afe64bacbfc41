"""The one scale loop's open places: constraints, per-scale conditions, the on_scale callback."""

from __future__ import annotations

import pytest
import torch

from nextscale.sampling.condition import build_condition, scale_conditions
from nextscale.sampling.constraints import (
    ScaleConstraints,
    cell_known_fraction,
    edit_thresholds,
    keep_first_scales,
    token_masks,
)
from nextscale.sampling.mixing import generate_mixed, switch_prompts
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, ScaleStep, generate, sample_scales

PROMPTS = ["a man with a beard", "a woman with red hair"]


def test_token_masks_rule_at_tiny_scales() -> None:
    known = torch.ones(1, 16, 16, dtype=torch.bool)
    known[0, :4, :4] = False  # a hole in the top-left 4x4 pixels (1/16 of the image)
    whole = token_masks(known, (1, 2, 4), threshold=1.0)
    assert not whole[0].any()  # the 1x1 token's cell is the whole image: not entirely known
    assert whole[1].tolist() == [[[False, True], [True, True]]]  # only the top-left quadrant touches the hole
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[0, 0] = False
    assert torch.equal(whole[2][0], expected)
    half = token_masks(known, (1, 2, 4), threshold=0.5)
    assert half[0].all() and half[1].all()  # 15/16 and 3/4 of the cells are known
    assert torch.equal(half[2][0], expected)  # a 4x4 cell is wholly inside the hole
    kept = token_masks(known, (1, 2, 4), threshold=1.0, keep_scales=2)
    assert kept[0].all() and kept[1].all() and torch.equal(kept[2][0], expected)


def test_cells_of_sides_that_do_not_divide_the_image_overlap() -> None:
    known = torch.ones(1, 16, 16, dtype=torch.bool)
    known[0, :, 5] = False  # column 5 lies in the cells of columns 0 (pixels 0-5) and 1 (pixels 5-10) of a 3x3 map
    fraction = cell_known_fraction(known, 3)
    assert (fraction[0, :, 0] < 1).all() and (fraction[0, :, 1] < 1).all() and (fraction[0, :, 2] == 1).all()
    masks = token_masks(known, (3,), threshold=1.0)
    assert masks[0][0].tolist() == [[False, False, True]] * 3


def test_edit_thresholds_and_validation() -> None:
    assert edit_thresholds((1, 2, 3, 4, 6, 8), latent_size=8) == [0.5, 0.5, 0.5, 0.5, 0.75, 0.75]
    known = torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="threshold"):
        token_masks(known, (1, 2), threshold=0.0)
    with pytest.raises(ValueError, match="keep_scales"):
        token_masks(known, (1, 2), keep_scales=3)
    with pytest.raises(ValueError, match="must both be"):
        ScaleConstraints((torch.zeros(1, 2, 2, dtype=torch.long),), (torch.zeros(1, 3, 3, dtype=torch.bool),))
    with pytest.raises(TypeError, match="bool"):
        ScaleConstraints((torch.zeros(1, 2, 2, dtype=torch.long),), (torch.zeros(1, 2, 2),))


def random_constraints(pipeline: Pipeline, batch: int, seed: int, latent: bool) -> ScaleConstraints:
    generator = torch.Generator().manual_seed(seed)
    config = pipeline.transformer.config
    codes = tuple(torch.randint(0, config.vocab_size, (batch, s, s), generator=generator) for s in config.scale_sizes)
    masks = tuple(torch.rand(batch, s, s, generator=generator) < 0.5 for s in config.scale_sizes)
    image_latent = None
    if latent:
        size = pipeline.tokenizer.config.latent_size
        image_latent = torch.randn(batch, config.latent_dim, size, size, generator=generator)
    return ScaleConstraints(codes, masks, image_latent)


@pytest.mark.parametrize("latent", [False, True])
def test_constraints_are_respected_and_cached_equals_uncached(tiny_pipeline: Pipeline, latent: bool) -> None:
    config = SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    constraints = random_constraints(tiny_pipeline, 2, 0, latent)
    condition = build_condition(tiny_pipeline, PROMPTS)
    steps: list[ScaleStep] = []
    cached = sample_scales(tiny_pipeline, condition, [3, 4], config, constraints=constraints, on_scale=steps.append)
    reference = sample_scales(tiny_pipeline, condition, [3, 4], config, constraints=constraints, reference=True)
    for scale, (ours, theirs) in enumerate(zip(cached.codes, reference.codes)):
        assert torch.equal(ours, theirs)
        mask = constraints.masks[scale]
        accumulated = steps[scale - 1].accumulated if scale else None
        known = constraints.known_codes(scale, tiny_pipeline.tokenizer.quantizer, accumulated)
        assert torch.equal(ours[mask], known[mask])  # every constrained token holds the known code
    free = sample_scales(tiny_pipeline, condition, [3, 4], config)
    assert any(not torch.equal(a, b) for a, b in zip(free.codes, cached.codes))  # the constraints did something


def test_kept_scales_of_an_image_are_its_codes(tiny_pipeline: Pipeline) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    codes = tiny_pipeline.tokenizer.encode(image)
    result = sample_scales(tiny_pipeline, build_condition(tiny_pipeline, PROMPTS), [0, 1],
                           constraints=keep_first_scales(codes, 2))
    assert torch.equal(result.codes[0], codes[0]) and torch.equal(result.codes[1], codes[1])


def test_on_scale_streams_codes_and_previews(tiny_pipeline: Pipeline) -> None:
    steps: list[ScaleStep] = []
    condition = build_condition(tiny_pipeline, PROMPTS)
    result = sample_scales(tiny_pipeline, condition, [0, 1], on_scale=steps.append, previews=True)
    assert [step.scale for step in steps] == [0, 1, 2]
    assert [len(step.codes) for step in steps] == [1, 2, 3]
    assert all(step.preview is not None and step.preview.shape == (2, 3, 16, 16) for step in steps)
    progression = generate(tiny_pipeline, PROMPTS, [0, 1], return_progression=True).progression
    assert progression is not None
    for step, frame in zip(steps, progression):
        torch.testing.assert_close(step.preview, frame)
    assert all(torch.equal(a, b) for a, b in zip(result.codes, steps[-1].codes))


def test_a_prebuilt_condition_gives_what_generate_gives(tiny_pipeline: Pipeline) -> None:
    config = SamplingConfig(cfg_scale=3.0)
    condition = build_condition(tiny_pipeline, PROMPTS)
    first = sample_scales(tiny_pipeline, condition, [5, 6], config)
    again = sample_scales(tiny_pipeline, condition, [5, 6], config)  # the condition is reusable
    plain = generate(tiny_pipeline, PROMPTS, [5, 6], config)
    for a, b, c in zip(first.codes, again.codes, plain.codes):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="unconditional"):
        sample_scales(tiny_pipeline, build_condition(tiny_pipeline, PROMPTS, unconditional=False), [0, 1], config)


def test_every_distinct_prompt_is_encoded_once(tiny_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    encode = tiny_pipeline.text_encoder.encode
    monkeypatch.setattr(tiny_pipeline.text_encoder, "encode", lambda prompts: calls.append(list(prompts))
                        or encode(prompts))
    conditions = scale_conditions(tiny_pipeline, [["a", "b"], ["a", "b"], ["c", "b"]])
    assert calls == [["a", "b", "c", ""]]
    assert conditions[0] is conditions[1] and conditions[1] is not conditions[2]
    assert conditions[2].text["text_pooled"].shape[0] == 4  # 2 prompts + 2 empty-prompt rows
    torch.testing.assert_close(conditions[2].text["text_pooled"][1], conditions[0].text["text_pooled"][1])


def test_per_scale_prompts_change_only_the_scales_after_the_switch(tiny_pipeline: Pipeline) -> None:
    config = SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    seeds = list(range(8))
    single = generate(tiny_pipeline, [PROMPTS[0]] * 8, seeds, config)
    per_scale = [switch_prompts(PROMPTS[0], PROMPTS[1], 2, 3)] * 8
    mixed = generate_mixed(tiny_pipeline, per_scale, seeds, config)
    assert torch.equal(mixed.codes[0], single.codes[0]) and torch.equal(mixed.codes[1], single.codes[1])
    assert not torch.equal(mixed.codes[2], single.codes[2])
    same = generate_mixed(tiny_pipeline, [[PROMPTS[0]] * 3] * 8, seeds, config)
    assert all(torch.equal(a, b) for a, b in zip(same.codes, single.codes))
    # the uncached reference path (the teacher-forced pass with a text per scale) gives the same codes, for
    # a switch and for three prompts, guidance ending at a switch included
    for per_image in ([PROMPTS[0]], [PROMPTS[0]], [PROMPTS[1]]), (PROMPTS, PROMPTS[::-1], ["a portrait", "a man"]):
        for guided in (config, SamplingConfig(cfg_scale=2.0, guidance_off_last=1)):
            conditions = scale_conditions(tiny_pipeline, [list(prompts) for prompts in per_image])
            seeds = list(range(len(per_image[0])))
            cached = sample_scales(tiny_pipeline, conditions, seeds, guided)
            reference = sample_scales(tiny_pipeline, conditions, seeds, guided, reference=True)
            assert all(torch.equal(a, b) for a, b in zip(cached.codes, reference.codes))
    with pytest.raises(ValueError, match="switch-scale"):
        switch_prompts("a", "b", 3, 3)


def test_per_scale_prompts_work_when_guidance_ends_at_the_switch(tiny_pipeline: Pipeline) -> None:
    config = SamplingConfig(cfg_scale=2.0, guidance_off_last=1)
    conditions = scale_conditions(tiny_pipeline, [PROMPTS, PROMPTS, PROMPTS[::-1]])
    result = sample_scales(tiny_pipeline, conditions, [0, 1], config)
    single = sample_scales(tiny_pipeline, conditions[0], [0, 1], config)
    assert torch.equal(result.codes[1], single.codes[1])


def test_per_scale_prompts_with_layout_context(write_tiny_pipeline, tmp_path) -> None:
    """A `layout_context` model: after its switch an image sees both prompts (cached == uncached, guidance
    ending at a switch included), an image whose prompt does not change is the single-prompt sample, and
    the layout prompt changes the codes after the switch."""
    import dataclasses

    from nextscale.sampling.pipeline import load_pipeline
    from nextscale.transformer import NextScaleTransformer

    pipeline = load_pipeline(write_tiny_pipeline(tmp_path / "layout", transformer_overrides={"layout_context": True}))
    assert pipeline.transformer.detail_marker.abs().sum() > 0
    config = SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    per_scale = [[PROMPTS[0], PROMPTS[1]], [PROMPTS[1]] * 2, [PROMPTS[1]] * 2]  # image 0 switches at scale 1
    for guided in (config, SamplingConfig(cfg_scale=2.0, guidance_off_last=2)):
        conditions = scale_conditions(pipeline, per_scale)
        cached = sample_scales(pipeline, conditions, [0, 1], guided)
        reference = sample_scales(pipeline, conditions, [0, 1], guided, reference=True)
        assert all(torch.equal(a, b) for a, b in zip(cached.codes, reference.codes))
        alone = sample_scales(pipeline, build_condition(pipeline, [PROMPTS[1]]), [1], guided)
        assert all(torch.equal(a[1:], b) for a, b in zip(cached.codes, alone.codes))
    three = scale_conditions(pipeline, [PROMPTS, PROMPTS[::-1], ["a portrait", "a man"]])
    cached = sample_scales(pipeline, three, [0, 1], config)
    assert all(torch.equal(a, b) for a, b in zip(cached.codes, sample_scales(pipeline, three, [0, 1], config,
                                                                           reference=True).codes))
    # the same weights without the layout context: the codes after the switch change
    plain = NextScaleTransformer(dataclasses.replace(pipeline.transformer.config, layout_context=False)).eval()
    plain.load_state_dict({k: v for k, v in pipeline.transformer.state_dict().items() if k != "detail_marker"})
    switched = [[PROMPTS[0]] * 8, [PROMPTS[1]] * 8, [PROMPTS[1]] * 8]
    seeds = list(range(8))
    with_layout = sample_scales(pipeline, scale_conditions(pipeline, switched), seeds, config)
    without = sample_scales(dataclasses.replace(pipeline, transformer=plain), scale_conditions(pipeline, switched),
                            seeds, config)
    assert torch.equal(with_layout.codes[0], without.codes[0])
    assert not all(torch.equal(a, b) for a, b in zip(with_layout.codes[1:], without.codes[1:]))
