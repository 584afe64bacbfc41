"""The analytic FLOP count against PyTorch's own counter, scale by scale, on tiny configs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nextscale.scales import scale_offsets
from nextscale.transformer import NextScaleTransformer, TransformerConfig
from nextscale.transformer.flops import forward_flops, sampling_flops

TEXT_LENGTH, ROWS = 5, 3


def counted(function: object) -> float:
    with FlopCounterMode(display=False) as counter:
        function()  # type: ignore[operator]
    return float(counter.get_total_flops())


@pytest.mark.parametrize("cross_attention", [True, False])
@torch.inference_mode()
def test_per_scale_flops_match_the_flop_counter(cross_attention: bool) -> None:
    # FlopCounterMode has no formula for the CPU SDPA kernel: the naive backend's einsums are counted
    config = TransformerConfig(
        depth=2, width=32, num_heads=2, scale_sizes=(1, 2, 3), vocab_size=40, latent_dim=8, text_width=24,
        cross_attention=cross_attention, attention_backend="naive",
    )
    model = NextScaleTransformer(config).eval()
    generator = torch.Generator().manual_seed(0)
    text = {
        "text_tokens": torch.randn(ROWS, TEXT_LENGTH, 24, generator=generator),
        "text_mask": torch.ones(ROWS, TEXT_LENGTH, dtype=torch.bool),
        "text_pooled": torch.randn(ROWS, 24, generator=generator),
    }
    offsets = scale_offsets(config.scale_sizes)
    inputs = torch.randn(ROWS, offsets[-1] - offsets[1], 8, generator=generator)
    cached = sampling_flops(config, TEXT_LENGTH, ROWS, cached=True)
    recomputed = sampling_flops(config, TEXT_LENGTH, ROWS, cached=False)
    state = None
    for scale in range(config.num_scales):
        scale_inputs = None if scale == 0 else inputs[:, offsets[scale] - 1 : offsets[scale + 1] - 1]

        def step(scale: int = scale, scale_inputs: torch.Tensor | None = scale_inputs) -> None:
            nonlocal state
            if state is None:
                state = model.start(**text)
            model.forward_scale(state, scale, scale_inputs)

        measured = counted(step)
        assert measured == pytest.approx(cached[scale].total, rel=0.05), scale
        prefix = inputs[:, : offsets[scale + 1] - 1]
        measured = counted(lambda prefix=prefix, scale=scale: model(prefix, **text, num_scales=scale + 1))
        assert measured == pytest.approx(recomputed[scale].total, rel=0.05), scale
    assert recomputed[-1].total == pytest.approx(forward_flops(config, TEXT_LENGTH, ROWS).total)
