"""The transformer training with --distributed fsdp on two CPU processes (gloo): the loss of DDP, step for step;
kill -9 between steps and --resume latest end with the weights of an uninterrupted run, bit for bit; the export
is the normal pipeline. The tokenizer trains with DDP (docs/scale-out.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import tokenizer_run

from nextscale.sampling.pipeline import load_pipeline
from nextscale.train.processes import KILL_HOOK
from nextscale.train.tokenizer_loop import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "fsdp_run.py"


def launch(out: Path, tokenizer: Path, text_encoder: Path, distributed: str, kill_at: str | None = None,
           *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    env.pop(KILL_HOOK, None)
    if kill_at is not None:
        env[KILL_HOOK] = kill_at
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               str(SCRIPT), str(out), str(tokenizer), str(text_encoder), distributed, *extra]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir) -> dict:
    root = tmp_path_factory.mktemp("fsdp")
    train_tokenizer(tokenizer_run(root / "tokenizer", steps=4, eval_images=8))
    return {"root": root, "tokenizer": root / "tokenizer" / "model", "text": tiny_bert_dir}


def curve(run: Path) -> list:
    return json.loads((run / "metrics.json").read_text())["loss_curve"]


@pytest.fixture(scope="module")
def fsdp_run(runs) -> Path:
    done = launch(runs["root"] / "fsdp", runs["tokenizer"], runs["text"], "fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    return runs["root"] / "fsdp"


@pytest.mark.slow
def test_fsdp_trains_with_the_loss_of_ddp_and_exports_the_pipeline(runs, fsdp_run):
    done = launch(runs["root"] / "ddp", runs["tokenizer"], runs["text"], "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, fsdp = curve(runs["root"] / "ddp"), curve(fsdp_run)
    assert [step for step, _ in fsdp] == list(range(1, 21))
    for (_, expected), (_, loss) in zip(ddp, fsdp):
        assert loss == pytest.approx(expected, rel=1e-5)
    assert (fsdp_run / "checkpoints" / "step_15" / "pytorch_model_fsdp_0").is_dir()  # sharded checkpoints
    exported = load_file(str(fsdp_run / "model" / "model.safetensors"))
    reference = load_file(str(runs["root"] / "ddp" / "model" / "model.safetensors"))
    assert exported.keys() == reference.keys()
    for key, value in exported.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-3, atol=1e-4)  # AdamW after 20 steps
    pipeline = load_pipeline(fsdp_run / "pipeline")
    weights = pipeline.transformer.state_dict()
    assert all(torch.equal(weights[key], value) for key, value in exported.items())


@pytest.mark.slow
def test_fsdp_kill_9_between_steps_then_resume_latest_is_bit_exact(runs, fsdp_run):
    run = runs["root"] / "killed"
    done = launch(run, runs["tokenizer"], runs["text"], "fsdp", "var:step:7")
    assert done.returncode != 0 and (run / "checkpoints" / "step_5").is_dir(), done.stderr[-2000:]
    assert not (run / "model").exists()
    done = launch(run, runs["tokenizer"], runs["text"], "fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    assert json.loads((run / "metrics.json").read_text())["resumed_at"] == [5]
    assert (run / "model" / "model.safetensors").read_bytes() == (fsdp_run / "model" / "model.safetensors").read_bytes()
    assert curve(run) == curve(fsdp_run)


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_keeps_the_loss(runs, fsdp_run):
    run = runs["root"] / "checkpointed"
    done = launch(run, runs["tokenizer"], runs["text"], "fsdp", None, "--activation-checkpointing")
    assert done.returncode == 0, done.stderr[-3000:]
    for (_, expected), (_, loss) in zip(curve(fsdp_run), curve(run)):
        assert loss == pytest.approx(expected, rel=1e-6)
