"""The bundled demo model end to end: load it, sample prompts on the CPU, and let the judge read them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nextscale.portraits.judge import AttributeJudge
from nextscale.sampling.pipeline import DEMO_PIPELINE, load_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate

ROOT = Path(__file__).resolve().parent.parent
# Attributes the demo model draws reliably (docs/experiments/adherence-bundled-demo.md); each prompt asks for two.
PROMPTS = {
    "a man with a beard on a blue background": {"beard": "yes", "background": "blue"},
    "a woman with red hair on a green background": {"hair_color": "red", "background": "green"},
    "a man with glasses on a yellow background": {"glasses": "yes", "background": "yellow"},
    "a woman with blond hair on a purple background": {"hair_color": "blond", "background": "purple"},
}


@pytest.fixture(scope="module")
def demo():
    return load_pipeline(None)


def assert_follows_the_prompts(images) -> None:
    """The bundled judge reads what PROMPTS ask for in `images` (one per prompt, in order), but for one slip."""
    judge = AttributeJudge.from_pretrained(DEMO_PIPELINE / "judge")
    wrong = [(prompt, name, value, seen[name]) for (prompt, wanted), seen in zip(PROMPTS.items(), judge.predict(images))
             for name, value in wanted.items() if seen[name] != value]
    assert len(wrong) <= 1, f"the judge disagrees with the prompt on {wrong}"


def teacher_forced_logits(pipeline, teacher_inputs, prompts, dtype):
    """The pipeline transformer's logits for `teacher_inputs` (cast to `dtype`) with the prompts' text."""
    import torch

    from nextscale.sampling.sampler import encode_text

    with torch.no_grad():
        return pipeline.transformer(teacher_inputs.to(dtype), **encode_text(pipeline, prompts, False, dtype))


def test_bundled_demo_is_small_and_documented():
    size = sum(path.stat().st_size for path in DEMO_PIPELINE.rglob("*") if path.is_file())
    assert size < 40 * 2**20, f"the bundled demo is {size / 2**20:.1f} MB, over 40 MB"
    metrics = json.loads((DEMO_PIPELINE / "metrics.json").read_text())
    assert {"tokenizer", "transformer", "judge"} <= set(metrics)


def test_demo_samples_follow_the_prompt(demo):
    result = generate(demo, list(PROMPTS), seeds=[0, 1, 2, 3], config=SamplingConfig(cfg_scale=4.0))
    assert result.images.shape == (4, 3, 64, 64)
    assert_follows_the_prompts(result.images)


def test_sample_script_writes_images_with_the_bundled_model(tmp_path):
    command = [sys.executable, "sample.py", "--prompt", "a smiling woman with red hair", "--num-images", "2",
               "--save-progression", "--out", str(tmp_path), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "grid.png").is_file()
    assert len(list(tmp_path.glob("*-progression.gif"))) == 2


def test_bfloat16_sampling_follows_the_prompt_and_matches_float32_logits(demo):
    """bf16 is a first-class inference dtype: its teacher-forced logits stay within 2% of the logits' spread
    of float32 (mean |difference|; 1% measured), pick the same most likely code for >= 90% of tokens (96.5%
    measured), and its samples follow the prompts as float32's do."""
    import torch

    half = load_pipeline(None, dtype=torch.bfloat16)
    prompts = list(PROMPTS)
    result = generate(half, prompts, seeds=[0, 1, 2, 3], config=SamplingConfig(cfg_scale=4.0))
    assert result.images.dtype == torch.float32 and result.images.shape == (4, 3, 64, 64)
    assert_follows_the_prompts(result.images)
    with torch.no_grad():
        teacher_inputs = demo.tokenizer.teacher_inputs(result.codes)
    full = teacher_forced_logits(demo, teacher_inputs, prompts, torch.float32)
    low = teacher_forced_logits(half, teacher_inputs, prompts, torch.bfloat16)
    assert float((full - low).abs().mean()) <= 0.02 * float(full.std())
    assert float((full.argmax(-1) == low.argmax(-1)).float().mean()) >= 0.9
