"""The training runtime on a toy training and on the real ones: non-finite steps, checkpoints that fail
to load, several trainings in one process, a frozen peer, one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_training import ToyConfig, train_toy

from nextscale.train.runtime import NonFiniteTraining, finite_json
from nextscale.train.state import CheckpointError, list_checkpoints

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def toy(output_dir: Path, **overrides) -> ToyConfig:
    settings = dict(output_dir=str(output_dir), steps=10, batch_size=8, learning_rate=0.05, warmup_steps=0,
                    mixed_precision="no", tracker="none", log_every=1, checkpoint_every=2, keep_checkpoints=2,
                    max_nonfinite_steps=3)
    settings.update(overrides)
    return ToyConfig(**settings)


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_non_finite_step_is_skipped_counted_and_kept_out_of_metrics(tmp_path):
    clean = train_toy(toy(tmp_path / "clean", steps=6))
    result = train_toy(toy(tmp_path / "nan", nan_steps=(3,)))
    assert result.metrics["skipped_steps"] == [4]
    metrics = strict_json(tmp_path / "nan" / "metrics.json")  # strict JSON: the NaN loss is null
    assert dict(metrics["loss_curve"])[4] is None and all(v is not None for s, v in metrics["loss_curve"] if s != 4)
    assert all(math.isfinite(w) for w in metrics["weight"])
    # the skipped step changed nothing: steps 1-3 are the clean run's, and the run went on
    assert metrics["loss_curve"][:3] == clean.metrics["loss_curve"][:3]
    assert metrics["loss_curve"][4][1] is not None


def test_consecutive_non_finite_steps_stop_the_run_keeping_the_finite_checkpoints(tmp_path):
    with pytest.raises(NonFiniteTraining, match="3 consecutive steps"):
        train_toy(toy(tmp_path / "run", nan_steps=tuple(range(3, 10))))
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_non_finite_weights_are_never_saved_and_rotation_keeps_the_good_checkpoints(tmp_path):
    with pytest.raises(NonFiniteTraining, match="not finite"):
        train_toy(toy(tmp_path / "run", poison_step=4, keep_checkpoints=1))
    found = list_checkpoints(tmp_path / "run")
    assert [step for step, _ in found] == [4]  # step 6 was refused; step 4 was not rotated away
    weights = load_file(str(found[0][1] / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_finite_json_replaces_non_finite_numbers():
    assert finite_json({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"}) == {"a": [1.0, None], "b": None,
                                                                                   "c": "x"}


def test_resume_latest_skips_damaged_checkpoints_and_names_them(tmp_path, caplog):
    reference = train_toy(toy(tmp_path / "reference", keep_checkpoints=3))
    for damage in ("truncate", "missing_optimizer", "random_state"):
        run = tmp_path / damage
        shutil.copytree(tmp_path / "reference" / "checkpoints", run / "checkpoints")
        newest = run / "checkpoints" / "step_8"
        if damage == "truncate":
            weights = newest / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:50])
        elif damage == "missing_optimizer":
            (newest / "optimizer.bin").unlink()
        else:
            (newest / "random_states_0.pkl").write_bytes(b"not a pickle")
        (run / "checkpoints" / ".step_10.tmp").mkdir()  # a stale temporary directory of a killed save
        caplog.clear()
        result = train_toy(toy(run, resume="latest", keep_checkpoints=3))
        assert result.metrics["resumed_at"] == [6], damage
        assert result.metrics["weight"] == reference.metrics["weight"]  # and still exact
        assert any("step_8" in record.getMessage() for record in caplog.records), damage
        assert not (run / "checkpoints" / ".step_10.tmp").exists()


def test_a_random_state_that_cannot_be_restored_is_an_error_unless_accepted(tmp_path):
    train_toy(toy(tmp_path / "run", steps=4, keep_checkpoints=1))
    (tmp_path / "run" / "checkpoints" / "step_2" / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match="random_states_0.pkl is missing.*--accept-lost-random-state"):
        train_toy(toy(tmp_path / "run", steps=4, keep_checkpoints=1, resume="latest"))
    result = train_toy(toy(tmp_path / "run", steps=4, keep_checkpoints=1, resume="latest",
                           accept_lost_random_state=True))
    assert result.metrics["resumed_at"] == [2]


def test_two_trainings_in_one_process_with_different_precisions(tmp_path):
    first = train_toy(toy(tmp_path / "fp32", steps=2))
    second = train_toy(toy(tmp_path / "bf16", steps=2, mixed_precision="bf16"))
    third = train_toy(toy(tmp_path / "again", steps=2))
    assert first.metrics["weight"] == third.metrics["weight"]
    assert second.metrics["train_steps"] == 2


def run_script(args: list[str], processes: int = 1, timeout: float = 300, env: dict | None = None):
    environment = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
                   **(env or {})}
    if processes > 1:
        args = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", *args]
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines and lines[-1].startswith("error: "), done.stderr[-2000:]
    return lines[-1]


@pytest.mark.slow
def test_two_processes_skip_a_step_jointly_and_a_frozen_peer_ends_the_run(tmp_path):
    """NaN on process 1 only: both skip (weights stay identical). A peer that freezes ends the run with one
    line within the collective timeout instead of 30 minutes."""
    done = run_script([str(TESTS / "toy_training.py"), "--output-dir", str(tmp_path / "nan"), "--steps", "6",
                       "--batch-size", "4", "--mixed-precision", "no", "--tracker", "none", "--log-every", "1",
                       "--warmup-steps", "0", "--nan-steps", "2", "--nan-rank", "1"], processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = strict_json(tmp_path / "nan" / "metrics.json")
    assert metrics["skipped_steps"] == [3] and dict(metrics["loss_curve"])[3] is None
    started = time.monotonic()
    done = run_script([str(TESTS / "toy_training.py"), "--output-dir", str(tmp_path / "frozen"), "--steps", "6",
                       "--batch-size", "4", "--mixed-precision", "no", "--tracker", "none", "--freeze-step", "2",
                       "--collective-timeout", "5"], processes=2, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - started < 55  # the frozen peer sleeps 60 s
    assert "error: a collective operation timed out" in done.stderr, done.stderr[-3000:]


def test_training_learning_rate_1e3_stops_with_one_line_and_saves_nothing_non_finite(tmp_path):
    out = tmp_path / "run"
    done = run_script(["train_tokenizer.py", "--output-dir", str(out), "--learning-rate", "1e3", "--steps", "40",
                       "--batch-size", "4", "--checkpoint-every", "2", "--keep-checkpoints", "2",
                       "--max-nonfinite-steps", "3", "--mixed-precision", "no", "--tracker", "none",
                       "--eval-images", "8", "--warmup-steps", "0", "--data.image-size", "16",
                       "--data.synthetic-length", "64", "--model.image-size", "16", "--model.latent-dim", "8",
                       "--model.vocab-size", "64", "--model.scale-sizes", "1", "2", "4", "--model.channel-mult", "1",
                       "2", "2", "--model.encoder-channels", "16", "--model.decoder-channels", "16",
                       "--model.decoder-res-blocks", "1", "--model.norm-groups", "8", "--model.num-phi", "3"])
    assert done.returncode == 1, done.stderr[-3000:]
    assert "non-finite" in one_line_error(done)
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    for _, checkpoint in list_checkpoints(out):
        for value in load_file(str(checkpoint / "model.safetensors")).values():
            assert torch.isfinite(value).all(), checkpoint


def test_mixed_precision_has_one_source():
    from nextscale.train.run_config import precision_note

    assert precision_note("bf16", "bf16", {}) is None  # not under accelerate launch
    assert precision_note("bf16", "bf16", {"ACCELERATE_MIXED_PRECISION": "bf16"}) is None
    note = precision_note("bf16", "bf16", {"ACCELERATE_MIXED_PRECISION": "no"})
    assert note is not None and note.startswith("mixed precision: bf16 (--mixed-precision bf16): the training "
                                                "autocasts in bf16; ")
    assert ("the --mixed_precision 'no' that accelerate launch printed is the launcher's own setting and is not "
            "used: this command's --mixed-precision is the one setting (pass --mixed-precision no to train in fp32)"
            ) in note
    # auto always says what it chose, and why
    assert precision_note("auto", "no", {"ACCELERATE_MIXED_PRECISION": "no"}) == (
        "mixed precision: no (--mixed-precision auto: no native bf16 on this device): the training runs in fp32 "
        "(no autocast)")
    assert precision_note("auto", "bf16", {}) == (
        "mixed precision: bf16 (--mixed-precision auto: native bf16 on this device): the training autocasts in bf16")


def test_the_first_screen_says_one_precision_under_accelerate_launch(tmp_path, capsys, monkeypatch):
    """accelerate launch without a config file prints its own `--mixed_precision` 'no'; the run's one line
    about precision names what it trains in and says that the launcher's value is not used."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    train_toy(toy(tmp_path / "run", steps=2, mixed_precision="bf16"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "precision" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("mixed precision: bf16 (--mixed-precision bf16): the training autocasts in bf16; ")
    assert "the --mixed_precision 'no' that accelerate launch printed is the launcher's own setting and is not used" \
        in lines[0]


def test_tensorboard_logs_go_to_output_dir_tensorboard_and_the_run_says_so(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    train_toy(toy(tmp_path / "run", steps=3, tracker="tensorboard"))
    logs = tmp_path / "run" / "tensorboard"
    assert list(logs.glob("events.out.tfevents.*")), sorted(tmp_path.rglob("*"))
    assert not (tmp_path / "run" / "toy").exists()  # once output_dir/<training name>/
    assert f"TensorBoard logs: {logs} (tensorboard --logdir {logs})" in capsys.readouterr().out.splitlines()


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively():
    from nextscale.train.run_config import resolve_precision

    assert resolve_precision("auto", "cpu", native_bf16=True) == "bf16"
    assert resolve_precision("auto", "cpu", native_bf16=False) == "no"  # emulated bf16: many times slower
    assert resolve_precision("auto", "cuda", native_bf16=True) == "bf16"
    assert resolve_precision("auto", "cuda", native_bf16=False) == "no"
    assert resolve_precision("auto", "mps", native_bf16=True) == "no"
    for explicit in ("no", "bf16", "fp16"):  # an explicit choice is taken as it is
        assert resolve_precision(explicit, "cpu", native_bf16=False) == explicit


def test_a_run_records_the_precision_it_used_and_a_resume_in_another_one_warns(tmp_path, capsys):
    from nextscale.train.run_config import has_native_bf16, resolve_precision

    expected = resolve_precision("auto", "cpu", has_native_bf16(torch.device("cpu")))
    train_toy(toy(tmp_path / "run", steps=3, mixed_precision="auto"))  # checkpointed at step 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["mixed_precision_used"] == expected
    assert f"mixed precision: {expected} (--mixed-precision auto" in capsys.readouterr().out
    other = "bf16" if expected == "no" else "no"
    result = train_toy(toy(tmp_path / "run", steps=4, mixed_precision=other, resume="latest"))
    assert result.metrics["resumed_at"] == [2]
    assert (f"the checkpoint was trained in mixed precision {expected}, this run uses {other}: "
            f"pass --mixed-precision {expected}") in capsys.readouterr().out


def test_the_launch_device_is_known_before_accelerate_is_set_up(monkeypatch):
    from nextscale.train.runtime import launch_device

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # accelerate launch --cpu
    assert launch_device() == torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert launch_device().type == expected


def test_a_fresh_run_into_the_folder_of_another_run_refuses_unless_told(tmp_path, capsys):
    """A new run into a finished run's folder overwrote its model/ and metrics.json silently, and kept its
    checkpoints, so that a later --resume latest continued the old run under the new export."""
    from nextscale.train.run_folder import RunFolderInUse

    run = tmp_path / "run"
    train_toy(toy(run, steps=4))
    finished = (run / "metrics.json").read_bytes()
    with pytest.raises(RunFolderInUse, match=r"holds a finished run \(metrics.json\).*--resume latest.*--output-dir"
                                             r".*--overwrite"):
        train_toy(toy(run, steps=4, seed=1))
    assert (run / "metrics.json").read_bytes() == finished
    (run / "metrics.json").unlink()  # an interrupted run: its checkpoints alone
    with pytest.raises(RunFolderInUse, match=r"checkpoints \(step 2\)"):
        train_toy(toy(run, steps=4, seed=1))
    train_toy(toy(run, steps=4, resume="latest"))  # continuing it is what --resume latest is for
    train_toy(toy(tmp_path / "once", steps=2, checkpoint_every=10))  # a finished run without checkpoints
    with pytest.raises(RunFolderInUse, match="no checkpoint to continue"):
        train_toy(toy(tmp_path / "once", steps=2, resume="latest"))
    # --overwrite replaces the run: its checkpoints go too, so --resume latest continues the new one
    replaced = train_toy(toy(run, steps=3, seed=1, overwrite=True))
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert strict_json(run / "metrics.json")["weight"] == replaced.metrics["weight"]
    # a folder holding anything else (a cache, a note) is no run: a fresh run goes ahead and keeps it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    train_toy(toy(tmp_path / "other", steps=2))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    # from the command line: one line, exit code 2
    from toy_training import ToyConfig

    from nextscale.train.errors import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ToyConfig, train_toy, ["--output-dir", str(run), "--steps", "2", "--tracker", "none"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]


@pytest.mark.slow
def test_a_process_that_loses_its_peer_ends_with_one_line_and_no_traceback(tmp_path):
    """kill -9 of one of two processes: the survivor printed gloo's "Connection reset by peer" traceback. Now
    it ends with one line, which the launcher's failure summary repeats (its own ChildFailedError traceback
    remains: accelerate launch raises it for any child that failed, the killed one included)."""
    started = time.monotonic()
    done = run_script([str(TESTS / "toy_training.py"), "--output-dir", str(tmp_path / "run"), "--steps", "6",
                       "--batch-size", "4", "--mixed-precision", "no", "--tracker", "none", "--die-step", "2"],
                      processes=2, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 60
    lines = done.stderr.splitlines()
    assert any(line.startswith("error: another process of this run died") for line in lines), done.stderr[-3000:]
    assert "traceback : error: another process of this run died" in done.stderr  # the launcher's summary
    # the only traceback is the launcher's own (accelerate's launch.py raising ChildFailedError)
    assert done.stderr.count("Traceback (most recent call last)") <= 1, done.stderr[-3000:]
    assert "[rank0]" not in done.stderr and "Connection closed by peer. This is typically" not in done.stderr


@pytest.mark.slow
def test_work_of_the_main_process_alone_is_waited_for_past_the_collective_timeout(tmp_path):
    """The collective timeout is short (a frozen peer is noticed in a minute, not five), so what the main
    process does alone (a preview after a step, the export and evaluation) is waited for without it."""
    from nextscale.train.run_config import RunConfig

    assert RunConfig.collective_timeout == 60.0
    done = run_script([str(TESTS / "toy_training.py"), "--output-dir", str(tmp_path / "run"), "--steps", "4",
                       "--batch-size", "4", "--mixed-precision", "no", "--tracker", "none", "--checkpoint-every", "2",
                       "--collective-timeout", "3", "--main-work", "6"], processes=2, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert strict_json(tmp_path / "run" / "metrics.json")["train_steps"] == 4
