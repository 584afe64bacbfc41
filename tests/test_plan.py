"""The training planner: its FLOPs are the benchmarks' counter, its memory estimate is close to the peak of
real training steps, its command line prints every field and turns mistakes into one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nextscale.plan.config import PlanConfig, planned_model
from nextscale.plan.estimate import make_plan
from nextscale.plan.measure import measure_step, probe_tokenizer
from nextscale.plan.memory import activations, count_parameters, device_memory
from nextscale.transformer import NextScaleTransformer, TransformerConfig
from nextscale.transformer.flops import forward_flops, sampling_flops

ROOT = Path(__file__).resolve().parent.parent
VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def plan_of(argv: list[str]):
    import tyro

    from nextscale.train.presets import parser_arguments, resolve

    config = tyro.cli(PlanConfig, args=parser_arguments(argv), default=resolve(PlanConfig, argv))
    return make_plan(config, planned_model(config, argv))


@pytest.mark.parametrize("argv", [["--config", "recipes/imagenet-256-d16.yaml"],
                                  ["--config", "recipes/portraits-64.yaml"],
                                  ["--preset", "var-d20", "--condition", "class", "--data.source", "class-folder",
                                   "--data.path", "/data/imagenet"]])
def test_flops_are_the_benchmarks_counter(argv):
    plan = plan_of(argv)
    shape, text = plan.model.shape, plan.model.text_length
    assert plan.train_flops == 3 * forward_flops(shape, text).total  # bench/training.py's utilisation
    assert plan.sampling_flops == sum(part.total for part in sampling_flops(shape, text, 2))  # bench/sampling.py
    if shape.width <= 256:  # building the big ones for real takes a minute; the planner counts on the meta device
        assert plan.parameters.total == NextScaleTransformer(shape).num_parameters()


def test_the_imagenet_recipe_plans_var_d16():
    plan = plan_of(["--config", "recipes/imagenet-256-d16.yaml"])
    shape = plan.model.shape
    assert (shape.depth, shape.width, shape.num_tokens, shape.vocab_size) == (16, 1024, 680, 4096)
    assert shape.class_conditional and not shape.cross_attention
    assert 305e6 < plan.parameters.total < 315e6  # VAR-d16's 310M
    assert plan.config.global_batch == 768


CASES = {
    "tiny text, fp32": (TransformerConfig.preset("tiny"), 32, 8, "no"),
    "class, VAR scales, qk-norm, bf16": (TransformerConfig.var(2, width=64, num_heads=2, num_classes=10,
                                                               cross_attention=False, scale_sizes=VAR_SCALES,
                                                               vocab_size=512), 0, 2, "bf16"),
}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_memory_estimate_is_within_a_quarter_of_a_measured_step(case, checkpointing):
    shape, text_length, batch, precision = CASES[case]
    torch.set_num_threads(1)
    measured = measure_step(shape, text_length, batch, precision, checkpointing)
    parameters = count_parameters(shape)
    frozen = 4 * sum(p.numel() for p in probe_tokenizer(shape).parameters())
    activation = activations(shape, text_length, batch, precision, parameters, checkpointing)
    estimate = device_memory("single", 1, parameters, frozen, activation).peak
    assert 0.75 < estimate / measured.peak < 1.25, (estimate, measured.peak)


def test_checkpointing_and_sharding_lower_the_estimate():
    plan = plan_of(["--config", "recipes/imagenet-256-d16.yaml", "--gpus", "16", "--batch-size", "48"])
    memory = plan.memory
    assert memory["ddp", True].peak < memory["ddp", False].peak
    assert memory["fsdp", False].peak < memory["ddp", False].peak
    assert memory["fsdp", False].optimizer * 16 == pytest.approx(memory["ddp", False].optimizer, rel=1e-3)
    for key, largest in plan.largest_batch.items():
        assert largest >= 1
        fits = lambda batch, key=key: plan_of(["--config", "recipes/imagenet-256-d16.yaml", "--gpus", "16",
                                               "--batch-size", str(batch)]).memory[key].peak <= plan.usable_bytes
        assert fits(largest) and not fits(largest + 1), key


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextscale.plan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_prints_every_field():
    done = run_plan("--config", "recipes/imagenet-256-d16.yaml", "--gpus", "16", "--batch-size", "48",
                    "--images", "1281167", "--epochs", "200")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for field in ("parameters: 310.", "tokens per image: 680", "training FLOPs per image:", "sampling FLOPs per image:",
                  "weights (fp32)", "gradients (fp32)", "optimizer states", "activations", "DDP +ckpt", "FSDP/16",
                  "peak", "largest micro-batch that fits", "hours at 40% MFU of 16 x 312 TFLOP/s",
                  "256,233,400 images (200 epochs of 1,281,167)"):
        assert field in out, field


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "--gpus must be >= 1"),
    (["--mfu", "1.5"], "--mfu is a fraction"),
    (["--images", "1000"], "--images and --epochs go together"),
    (["--config", "recipes/no-such.yaml"], "no such recipe file"),
    (["--text-encoder", "someone/unknown"], "--text-width"),
])
def test_bad_input_is_one_error_line(args, message):
    done = run_plan(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
