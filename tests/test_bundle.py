"""`python -m nextscale.train.bundle`: three runs become one demo directory, atomically, with the
transformer run's recommended sampling settings carried over."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import PipelineWriter
from safetensors import safe_open

from nextscale.errors import run_cli
from nextscale.portraits.judge import AttributeJudge, JudgeConfig
from nextscale.sampling.pipeline import PIPELINE_FILE, load_pipeline, record_sampling, write_pipeline
from nextscale.train.bundle import BundleArgs, bundle, main


def files_of(directory: Path) -> dict[Path, bytes]:
    """Every file under `directory` with its bytes."""
    return {path: path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.fixture
def runs(tmp_path: Path, write_tiny_pipeline: PipelineWriter) -> BundleArgs:
    """A tokenizer run, a transformer run (pipeline with a recorded sampling entry) and a judge run."""
    tokenizer_run, var_run, judge_run = tmp_path / "tokenizer", tmp_path / "var", tmp_path / "judge"
    write_tiny_pipeline(var_run / "pipeline")
    record_sampling(var_run / "pipeline", cfg_scale=2.5, top_k=None, top_p=0.9, source="evaluation")
    AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8)).save_pretrained(
        judge_run / "model")
    for run, loss in ((tokenizer_run, 0.1), (var_run, 3.0), (judge_run, 0.2)):
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"loss": loss}))
    return BundleArgs(tokenizer_run=tokenizer_run, var_run=var_run, judge=judge_run, out=tmp_path / "bundle")


def test_bundle_keeps_the_recommended_sampling_and_halves_the_weights(runs: BundleArgs) -> None:
    out = bundle(runs)
    spec = json.loads((out / PIPELINE_FILE).read_text())
    assert spec["sampling"] == {"cfg_scale": 2.5, "top_k": None, "top_p": 0.9, "source": "evaluation"}
    pipeline = load_pipeline(out)
    assert pipeline.recommended == spec["sampling"]
    with safe_open(str(out / "transformer" / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}
    source = load_pipeline(runs.var_run / "pipeline")
    for ours, theirs in zip(pipeline.transformer.state_dict().values(), source.transformer.state_dict().values()):
        torch.testing.assert_close(ours, theirs.to(torch.float16).to(ours.dtype))
    assert AttributeJudge.from_pretrained(out / "judge").config.image_size == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert {name: value["loss"] for name, value in metrics.items()} == {"tokenizer": 0.1, "transformer": 3.0,
                                                                         "judge": 0.2}
    assert not (out / "teacher").exists()  # no teacher given, none before


def test_the_alignment_teacher_is_bundled_and_kept_by_later_bundles(runs: BundleArgs, tmp_path: Path) -> None:
    teacher_run = tmp_path / "teacher"
    AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8)).save_pretrained(
        teacher_run / "model")  # any model directory: the bundle copies it as it is
    (teacher_run / "metrics.json").write_text(json.dumps({"held_out_accuracy": {"gender": 0.9}}))
    first = files_of(bundle(dataclasses.replace(runs, teacher=teacher_run)) / "teacher")
    assert {path.name for path in first} == {"config.json", "model.safetensors", "metrics.json"}
    assert files_of(bundle(runs) / "teacher") == first  # re-bundled without --teacher: kept
    with pytest.raises(FileNotFoundError, match="give --teacher the output directory"):
        bundle(dataclasses.replace(runs, teacher=tmp_path / "missing"))


def test_a_failed_bundle_leaves_the_previous_one_and_says_why_in_one_line(
        runs: BundleArgs, capsys: pytest.CaptureFixture[str]) -> None:
    before = bundle(runs)
    files = files_of(before)
    (runs.judge / "metrics.json").unlink()
    argv = ["--tokenizer-run", str(runs.tokenizer_run), "--var-run", str(runs.var_run), "--judge", str(runs.judge),
            "--out", str(runs.out)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(BundleArgs, main, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "metrics.json" in error and len(error.splitlines()) == 1
    assert files_of(before) == files
    assert not list(runs.out.parent.glob(".bundle.*"))  # no temporary directory left behind


def test_a_failure_while_writing_keeps_the_previous_pipeline(runs: BundleArgs) -> None:
    before = bundle(runs)
    files = files_of(before)
    pipeline = load_pipeline(before)

    def fail(directory: Path) -> None:
        assert (directory / PIPELINE_FILE).is_file()  # called after the parts are written, before the swap
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_pipeline(before, pipeline.tokenizer, pipeline.transformer, "other-encoder", 8, extra=fail)
    assert files_of(before) == files
    assert not list(before.parent.glob(".bundle.*"))
