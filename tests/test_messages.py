"""Messages that name the problem and what to do, where a hostile user met weak ones: a NaN cfg through the
UI blamed on float16, "must be in [0, None]", a damaged trainer_state.json skipped unnamed, and the
training data that gives nothing ("torch.cat(): expected a non-empty list", "no batch of None")."""

from __future__ import annotations

import logging
import tarfile

import pytest
import torch

from nextscale.sampling import SamplingConfig, generate
from nextscale.sampling.pipeline import load_pipeline


def test_a_nan_cfg_is_refused_by_the_sampling_settings_themselves():
    from nextscale.ui.controls import sampling_config

    for field in ("cfg_scale", "top_p", "temperature"):
        with pytest.raises(ValueError, match=f"{field} must be a finite number"):
            SamplingConfig(**{field: float("nan")})
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        sampling_config("nan", "linear", 0, 0, 1.0, 1.0)  # what the UI's HTTP API passes on


def test_nan_logits_in_float32_blame_the_weights_not_float16(tiny_pipeline_dir):
    pipeline = load_pipeline(tiny_pipeline_dir)
    with torch.no_grad():
        next(pipeline.transformer.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN logits") as error:
        generate(pipeline, ["a man"], 0, SamplingConfig(top_k=1))
    assert "float16" not in str(error.value) and "weights" in str(error.value)
    half = load_pipeline(tiny_pipeline_dir, dtype=torch.float16)
    with torch.no_grad():
        next(half.transformer.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="float16 overflow"):
        generate(half, ["a man"], 0, SamplingConfig(top_k=1))


def test_keep_scales_below_zero_says_what_it_must_be(capsys, tmp_path):
    from nextscale.errors import run_cli
    from nextscale.sampling.cli import SampleArgs, main

    (tmp_path / "in.png").write_bytes(b"")
    with pytest.raises(SystemExit):
        run_cli(SampleArgs, main, ["--prompt", "a man", "--image", str(tmp_path / "in.png"), "--keep-scales", "-1",
                                   "--device", "cpu", "--no-progress", "--checkpoint", str(tmp_path / "missing")])
    line = capsys.readouterr().err.strip()
    assert "None" not in line and "--keep-scales must be >= 0" in line, line


def test_a_damaged_trainer_state_is_named_when_resuming(tmp_path, caplog):
    from toy_training import ToyConfig, train_toy

    settings = dict(output_dir=str(tmp_path / "run"), steps=5, batch_size=8, warmup_steps=0, mixed_precision="no",
                    tracker="none", checkpoint_every=2, keep_checkpoints=3)
    train_toy(ToyConfig(**settings))  # checkpoints at steps 2 and 4
    (tmp_path / "run" / "checkpoints" / "step_4" / "trainer_state.json").write_text('{"step": ')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = train_toy(ToyConfig(**settings, resume="latest"))
    assert result.metrics["resumed_at"] == [2]
    messages = [record.getMessage() for record in caplog.records]
    assert any("step_4" in message and "trainer_state.json" in message for message in messages), messages


def test_training_data_that_gives_nothing_is_named(tmp_path, tiny_bert_dir):
    pytest.importorskip("webdataset")
    from conftest import tiny_tokenizer_config
    from test_data import add_member, encoded, noise_image
    from test_training import tokenizer_run, var_run

    from nextscale.data import DataConfig, HeldOutConfig
    from nextscale.tokenizer import MultiScaleVQVAE
    from nextscale.train.tokenizer_loop import train_tokenizer
    from nextscale.train.var_loop import train_var

    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with tarfile.open(tmp_path / "short.tar", "w") as tar:
        add_member(tar, "s000.png", encoded(noise_image(seed=0), "PNG"))
        add_member(tar, "s000.txt", b"one caption\n")
    empty = DataConfig(source="webdataset", path=str(tmp_path / "empty.tar"), image_size=16)
    short = DataConfig(source="webdataset", path=str(tmp_path / "short.tar"), image_size=16)
    # the tokenizer's preview loader raised StopIteration on a valid tar with no members
    with pytest.raises(ValueError, match=r"empty.tar.*gave no readable image"):
        train_tokenizer(tokenizer_run(tmp_path / "tokenizer", data=empty, steps=2, batch_size=4))
    tokenizer = tmp_path / "model"
    MultiScaleVQVAE(tiny_tokenizer_config()).save_pretrained(tokenizer)
    held_out = HeldOutConfig(source="synthetic")
    with pytest.raises(ValueError, match=r"empty.tar.*gave no readable image") as error:  # was "torch.cat(): ..."
        train_var(var_run(tmp_path / "var", tokenizer, tiny_bert_dir, data=empty, eval_data=held_out, steps=2))
    assert "torch.cat" not in str(error.value)
    for cache in (True, False):  # was "no batch of None"
        with pytest.raises(ValueError, match=r"no batch of 4 in a whole pass.*lower --batch-size"):
            train_var(var_run(tmp_path / f"var-{cache}", tokenizer, tiny_bert_dir, data=short, eval_data=held_out,
                              steps=2, batch_size=4, cache=cache))


def test_an_error_in_a_loader_worker_is_one_line_with_its_own_message(tmp_path, capsys):
    """Too many bad files with --num-workers 2: the worker's whole traceback was squashed into the error line."""
    from dataclasses import dataclass

    from nextscale.data import DataConfig, make_dataloader
    from nextscale.train.errors import run_cli

    for index in range(4):
        (tmp_path / f"{index}.png").write_bytes(b"")

    @dataclass(frozen=True)
    class Read:
        workers: int = 2

    def read(args: Read) -> None:
        loader = make_dataloader(DataConfig(source="folder", path=str(tmp_path), image_size=16), batch_size=1,
                                 shuffle=False, num_workers=args.workers)
        batches = iter(loader)
        try:
            for _ in batches:
                pass
        finally:  # left to the cyclic GC, the failed iterator's workers would stall the next test
            getattr(batches, "_shutdown_workers", lambda: None)()

    for workers in (0, 2):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(Read, read, ["--workers", str(workers)])
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(("error: no readable image under", "error: 4 of 4 inputs")), lines
        assert "Traceback" not in lines[0] and "Caught" not in lines[0] and 'File "' not in lines[0], lines
