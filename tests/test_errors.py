"""User mistakes end with one line, `error: ...`, exit code 2 and no traceback (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nextscale.errors import run_cli
from nextscale.sampling.cli import SampleArgs, main, read_prompts
from nextscale.train.errors import run_cli as run_training_cli
from nextscale.train.var_loop import VarTrainConfig, train_var

ROOT = Path(__file__).resolve().parent.parent


def one_line(capsys: pytest.CaptureFixture[str], config_class, entry: Callable, argv: list[str]) -> str:
    """Run a command line in-process as its console script does; return its one error line."""
    runner = run_training_cli if config_class is VarTrainConfig else run_cli
    with pytest.raises(SystemExit) as exit_info:
        runner(config_class, entry, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def sample(capsys, argv: list[str]) -> str:
    return one_line(capsys, SampleArgs, main, ["--prompt", "a man", "--device", "cpu", "--no-progress", *argv])


def test_sample_options_are_checked_before_the_model_loads(capsys, tmp_path):
    missing = ["--checkpoint", str(tmp_path / "no-model")]  # never reached: the options fail first
    assert "--cfg must be a finite number" in sample(capsys, ["--cfg", "nan", *missing])
    assert "--temperature must be a finite number" in sample(capsys, ["--temperature", "nan", *missing])
    assert "--top-p must be a finite number" in sample(capsys, ["--top-p", "inf", *missing])
    assert "--seed must be in [0, " in sample(capsys, ["--seed", "99999999999999999999", *missing])
    assert "--seed must be in [0, " in sample(capsys, ["--seed", "-1", *missing])
    (tmp_path / "latin1.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8" in sample(capsys, ["--prompts-file", str(tmp_path / "latin1.txt"), *missing])
    assert "does not exist" in sample(capsys, ["--prompts-file", str(tmp_path), *missing])
    (tmp_path / "a-file").write_text("x")
    assert "--out" in sample(capsys, ["--out", str(tmp_path / "a-file"), *missing])
    assert "cannot be created" in sample(capsys, ["--out", str(tmp_path / "a-file" / "sub"), *missing])
    assert "--num-images and --batch-size must be >= 1" in sample(capsys, ["--num-images", "0"])
    assert "no model directory" in sample(capsys, [*missing, "--out", str(tmp_path / "out")])


def test_prompts_file_drops_the_byte_order_mark(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffa man with a beard\r\n\r\na woman\n".encode())
    assert read_prompts(SampleArgs(prompts_file=tmp_path / "bom.txt")) == ["a man with a beard", "a woman"]


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("part", "change", "message"),
    [
        ("tokenizer", {"latent_dim": "32"}, r"latent_dim is \"32\", expected an integer"),
        ("transformer", {"depth": 6.0}, "depth is 6.0, expected an integer"),
        ("transformer", {"width": None}, "width is null, expected an integer"),
        ("transformer", {"width": 128}, r"has shape .* in the weights.*check .*width=128"),
        ("tokenizer", {"vocab_size": 32}, r"check .*vocab_size=32"),
        ("tokenizer", {"code_rate": 0.004}, r"code_rate is 0.004: the option was removed .*commit cf98767"),
    ],
    ids=["string", "float", "null", "width", "vocabulary", "removed"],
)
def test_damaged_checkpoint_configs_name_the_field(capsys, tmp_path, write_tiny_pipeline, part, change, message):
    pipeline = write_tiny_pipeline(tmp_path / "pipeline")
    edit_json(pipeline / part / "config.json", **change)
    line = sample(capsys, ["--checkpoint", str(pipeline), "--out", str(tmp_path / "out")])
    assert f"{part}/config.json" in line or f"{part}/model.safetensors" in line
    assert __import__("re").search(message, line), line


def test_truncated_weights_and_a_malformed_pipeline_json(capsys, tmp_path, write_tiny_pipeline):
    pipeline = write_tiny_pipeline(tmp_path / "pipeline")
    weights = pipeline / "transformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "is damaged or truncated" in sample(capsys, ["--checkpoint", str(pipeline), "--out", str(tmp_path / "o")])
    other = write_tiny_pipeline(tmp_path / "other")
    (other / "pipeline.json").write_text('["tokenizer", "transformer"]')
    assert "expected a JSON object" in sample(capsys, ["--checkpoint", str(other), "--out", str(tmp_path / "o")])
    (other / "pipeline.json").write_text('{"tokenizer": 3, "transformer": "transformer", "text_encoder": "x"}')
    assert "tokenizer is 3" in sample(capsys, ["--checkpoint", str(other), "--out", str(tmp_path / "o")])


def test_training_options_and_inputs_fail_in_one_line(capsys, tmp_path, write_tiny_pipeline):
    pipeline = write_tiny_pipeline(tmp_path / "pipeline")
    edit_json(pipeline / "tokenizer" / "config.json", latent_dim="32")
    line = one_line(capsys, VarTrainConfig, train_var, ["--tokenizer", str(pipeline / "tokenizer"),
                                                          "--output-dir", str(tmp_path / "run"), "--tracker", "none"])
    assert "latent_dim" in line
    assert "--learning-rate must be a finite number" in one_line(capsys, VarTrainConfig, train_var,
                                                                 ["--learning-rate", "nan"])
    good = write_tiny_pipeline(tmp_path / "good")
    assert "not a checkpoint directory" in one_line(
        capsys, VarTrainConfig, train_var, ["--resume", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                                            "--tokenizer", str(good / "tokenizer"), "--tracker", "none",
                                            "--text-encoder", str(good.parent / "missing-encoder")])


def test_console_scripts_print_one_line_without_traceback_and_debug_shows_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "sample.py", "--prompt", "a", "--cfg", "nan"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: --cfg must be a finite number, got nan"
    debug = subprocess.run([*command, "--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError" in debug.stderr


def test_the_truncation_warning_counts_the_given_prompts_only(tiny_bert_dir):
    from nextscale.transformer.text import TextEncoder

    encoder = TextEncoder.from_pretrained(str(tiny_bert_dir), max_length=4)
    with pytest.warns(UserWarning, match="1 of 1 prompts exceed max_length=4"):
        encoder.encode(["a man with a beard and glasses", ""])  # "" is the unconditional row sampling adds
