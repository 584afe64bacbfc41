"""kill -9 at three places of both trainings, with one and two processes; `--resume latest` must end with
the weights of an uninterrupted run, bit for bit.

The tokenizer runs with weight EMA, dead-code restarts and the discriminator, the transformer with
condition dropout. The runtime's test hook (`NEXTSCALE_TEST_KILL_AT`) SIGKILLs the main process
exactly between two steps, inside a checkpoint write (files written, not yet renamed) and right after
the rotation deleted the oldest checkpoint. Each chain of launches resumes from what the previous
launch left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nextscale.train.optim import warmup_stable_decay
from nextscale.train.runtime import KILL_HOOK

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "resume_run.py"
# (kill place, what the place leaves on disk): checkpoints every 2 steps, 2 kept, 8 steps per training
CHAIN = [
    ("tokenizer:step:3", lambda run: (run / "tokenizer/checkpoints/step_2").is_dir()
     and not (run / "tokenizer/checkpoints/step_4").exists()),
    ("tokenizer:checkpoint:6", lambda run: (run / "tokenizer/checkpoints/.step_6.tmp/trainer_state.json").is_file()
     and not (run / "tokenizer/checkpoints/step_6").exists()),
    ("tokenizer:rotation:6", lambda run: (run / "tokenizer/checkpoints/step_6").is_dir()
     and not (run / "tokenizer/checkpoints/step_2").exists()),
    ("var:step:3", lambda run: (run / "tokenizer/metrics.json").is_file()
     and (run / "var/checkpoints/step_2").is_dir()),
    ("var:checkpoint:4", lambda run: (run / "var/checkpoints/.step_4.tmp").is_dir()),
    ("var:rotation:6", lambda run: (run / "var/checkpoints/step_6").is_dir()
     and not (run / "var/checkpoints/step_2").exists()),
]


def launch(out: Path, text_encoder: Path, processes: int, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    env.pop(KILL_HOOK, None)
    if kill_at is not None:
        env[KILL_HOOK] = kill_at
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "0", str(SCRIPT)]
    return subprocess.run([*command, str(out), str(text_encoder)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)


def final_state(run: Path) -> dict:
    return {
        "tokenizer": (run / "tokenizer/model/model.safetensors").read_bytes(),
        "transformer": (run / "var/model/model.safetensors").read_bytes(),
        "tokenizer_curve": json.loads((run / "tokenizer/metrics.json").read_text())["loss_curve"],
        "transformer_curve": json.loads((run / "var/metrics.json").read_text())["loss_curve"],
    }


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_anywhere_then_resume_latest_is_bit_exact(processes, tmp_path, tiny_bert_dir):
    reference = launch(tmp_path / "reference", tiny_bert_dir, processes, None)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "killed"
    for kill_at, left_behind in CHAIN:
        done = launch(run, tiny_bert_dir, processes, kill_at)
        assert done.returncode != 0, f"{kill_at}: not killed\n{done.stderr[-2000:]}"
        assert left_behind(run), f"{kill_at}: unexpected state {sorted(p.name for p in run.rglob('*step_*'))}"
    done = launch(run, tiny_bert_dir, processes, None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(run.rglob(".step_*.tmp"))  # what the killed checkpoint writes left was cleaned up
    expected, resumed = final_state(tmp_path / "reference"), final_state(run)
    assert resumed["tokenizer"] == expected["tokenizer"]  # the exported EMA weights, bit for bit
    assert resumed["transformer"] == expected["transformer"]
    assert resumed["tokenizer_curve"] == expected["tokenizer_curve"]  # the whole curve, across resumes
    assert resumed["transformer_curve"] == expected["transformer_curve"]
    assert [step for step, _ in expected["transformer_curve"]] == list(range(1, 9))
    if processes > 1:  # the ranks of the uninterrupted run agree, and the schedule counts optimiser steps
        ranks = [json.loads((tmp_path / "reference" / f"rank{i}.json").read_text()) for i in range(processes)]
        assert [r["world"] for r in ranks] == [processes] * processes
        for key in ("tokenizer", "discriminator", "transformer"):
            assert ranks[0][key] == ranks[1][key], key
        tokenizer_lr, transformer_lr = ranks[0]["learning_rates"]
        assert tokenizer_lr[4] == [5, pytest.approx(2e-3 * warmup_stable_decay(4, 8, 5, 0.2))]
        assert transformer_lr[4] == [5, pytest.approx(3e-3 * warmup_stable_decay(4, 8, 5, 0.25))]


def test_a_run_that_finds_the_latent_cache_trains_as_one_that_builds_it(tmp_path, tiny_bert_dir):
    """With dropout, a run that found an existing cache differed from one that built it (and so a resumed run,
    which finds the cache, from the uninterrupted one); equal with dropout 0."""
    import shutil

    from safetensors.torch import load_file
    from test_training import tokenizer_run, var_run

    from nextscale.data import DataConfig
    from nextscale.train.tokenizer_loop import train_tokenizer
    from nextscale.train.var_loop import train_var
    from nextscale.transformer import TransformerConfig

    train_tokenizer(tokenizer_run(tmp_path / "tokenizer", steps=2, batch_size=4, eval_images=8, sample_every=100))
    settings = dict(steps=3, batch_size=4, cache_images=32, eval_images=8, cond_drop=0.5,
                    data=DataConfig(image_size=16, synthetic_length=64),
                    model=TransformerConfig.preset("tiny", dropout=0.1))
    tokenizer = tmp_path / "tokenizer" / "model"
    train_var(var_run(tmp_path / "built", tokenizer, tiny_bert_dir, **settings))
    shutil.copytree(tmp_path / "built" / "cache", tmp_path / "found" / "cache")
    train_var(var_run(tmp_path / "found", tokenizer, tiny_bert_dir, **settings))
    built, found = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("built", "found"))
    assert all(torch.equal(built[key], found[key]) for key in built)
