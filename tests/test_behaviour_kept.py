"""The bundled demo samples what it sampled before the packages were reorganised.

`tests/data/demo_before_move.npz` was recorded from the bundled pipeline at commit cf98767 (before the
clean-core reorganisation) with the recipe below; generation, per-scale prompts, inpainting and
variations must give the same codes (and generation the same pixels) today.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nextscale.images import to_uint8
from nextscale.sampling.editing import inpaint, variations
from nextscale.sampling.mixing import generate_mixed, switch_prompts
from nextscale.sampling.pipeline import load_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate

RECORDED = Path(__file__).parent / "data" / "demo_before_move.npz"
PROMPTS = ["a man with a beard on a blue background", "a woman with red hair on a green background",
           "a smiling man with glasses", "a woman with blond hair on a purple background"]


def flat(codes: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([scale.flatten(1) for scale in codes], 1).numpy()


@pytest.fixture(scope="module")
def outputs() -> dict[str, np.ndarray]:
    pipe = load_pipeline(None)
    config = SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)
    made = generate(pipe, PROMPTS, seeds=[0, 1, 2, 3], config=config)
    num_scales = pipe.transformer.config.num_scales
    mixed = generate_mixed(pipe, [switch_prompts("a man on a blue background", "a man with a beard and glasses", 3,
                                                 num_scales)], seeds=[5], config=config)
    known = torch.ones(1, 64, 64, dtype=torch.bool)
    known[:, 16:48, 16:48] = False
    painted = inpaint(pipe, made.images[:1], known, ["a man with glasses on a blue background"], seeds=[7],
                      config=config)
    varied = variations(pipe, made.images[1:2], 2, ["a woman with red hair"], seeds=[9], config=config)
    return {"generate_images": to_uint8(made.images).numpy(), "generate_codes": flat(made.codes),
            "mixed_codes": flat(mixed.codes), "inpaint_codes": flat(painted.codes),
            "variation_codes": flat(varied.codes)}


@pytest.mark.parametrize("name", ["generate_codes", "mixed_codes", "inpaint_codes", "variation_codes"])
def test_same_codes_as_before(outputs, name):
    recorded = np.load(RECORDED)[name]
    assert np.array_equal(outputs[name], recorded), f"{name}: {(outputs[name] != recorded).sum()} codes changed"


def test_same_pixels_as_before(outputs):
    difference = np.abs(outputs["generate_images"].astype(int) - np.load(RECORDED)["generate_images"].astype(int))
    assert difference.max() <= 1, f"pixels differ by up to {difference.max()}"
