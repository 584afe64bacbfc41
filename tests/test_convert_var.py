"""The VAR converter as a hostile user meets it: an --out folder that holds the user's own files, an --out that
is a file, NaN or integer weights, a truncated .safetensors, a read-only filesystem."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_var_reference import FIXTURE, needs_fixture

from nextscale.sampling import convert_var as converter
from nextscale.sampling.convert_var import ConvertArgs, main
from nextscale.sampling.pipeline import load_pipeline
from nextscale.state_mapping import ConversionError

pytestmark = needs_fixture


def convert(out: Path, vae: Path | None = None, var: Path | None = None) -> Path:
    return main(ConvertArgs(vae=vae or FIXTURE / "vqvae.safetensors", var=var or FIXTURE / "var.safetensors", out=out))


def one_line(capsys, monkeypatch, argv: list[str]) -> str:
    """Run the console script in-process; return its one error line (exit code 2)."""
    monkeypatch.setattr(sys, "argv", ["nextscale-convert-var", *argv])
    with pytest.raises(SystemExit) as exit_info:
        converter.cli()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_existing_out_folder_keeps_what_the_converter_did_not_write(tmp_path):
    """--out on a folder deleted the folder's own files (a user's notes.txt, sub/)."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "sub" / "kept.bin").write_bytes(b"\x00")
    for _ in range(2):  # converting again replaces the pipeline, and still keeps the user's files
        convert(out)
        assert (out / "notes.txt").read_text() == "my notes" and (out / "sub" / "kept.bin").read_bytes() == b"\x00"
        assert load_pipeline(out).transformer.config.depth == 2
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "pipeline.json", "sub", "tokenizer",
                                                           "transformer"]
    (out / "tokenizer" / "README.md").write_text("my card")  # inside a part too
    convert(out)
    assert (out / "tokenizer" / "README.md").read_text() == "my card"
    assert not [path for path in tmp_path.rglob(".*")], "temporary folders left behind"


def test_an_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys, monkeypatch):
    """On an existing file, --out replaced the file with a folder."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"precious")
    line = one_line(capsys, monkeypatch, ["--vae", str(FIXTURE / "vqvae.safetensors"), "--var",
                                          str(FIXTURE / "var.safetensors"), "--out", str(target)])
    assert "is a file" in line and target.read_bytes() == b"precious"


def test_non_finite_and_integer_weights_are_refused_naming_the_tensor(tmp_path):
    """NaN weights were written unchecked (sampling then blamed a float16 overflow while running in float32),
    and an int64 tensor was accepted where a float weight belongs."""
    from safetensors.torch import save_file

    vae, var = load_file(str(FIXTURE / "vqvae.safetensors")), load_file(str(FIXTURE / "var.safetensors"))
    key = "blocks.1.ffn.fc2.weight"
    poisoned = {**var, key: var[key].clone()}
    poisoned[key][0, 0] = float("nan")
    save_file(poisoned, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ConversionError, match=r"nan.safetensors: blocks\.1\.ffn\.fc2\.weight is not finite \(1 NaN"):
        convert(tmp_path / "out", var=tmp_path / "nan.safetensors")
    save_file({**var, key: var[key].long()}, str(tmp_path / "int.safetensors"))
    with pytest.raises(ConversionError, match=r"blocks\.1\.mlp\.fc2\.weight.*int64.*floating"):
        convert(tmp_path / "out", var=tmp_path / "int.safetensors")
    assert not (tmp_path / "out").exists()
    poisoned_vae = {**vae, "decoder.conv_out.bias": torch.full_like(vae["decoder.conv_out.bias"], float("inf"))}
    save_file(poisoned_vae, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ConversionError, match=r"tokenizer .*not finite \(NaN or infinite values\) decoder\.out\.bias"):
        convert(tmp_path / "out", vae=tmp_path / "vae.safetensors")


def test_a_truncated_safetensors_and_a_read_only_out_are_one_line(tmp_path, capsys, monkeypatch):
    data = (FIXTURE / "var.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    args = ["--vae", str(FIXTURE / "vqvae.safetensors"), "--out", str(tmp_path / "out")]
    line = one_line(capsys, monkeypatch, [*args, "--var", str(tmp_path / "cut.safetensors")])
    assert "cut.safetensors" in line and "truncated" in line

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path))

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    line = one_line(capsys, monkeypatch, [*args, "--var", str(FIXTURE / "var.safetensors")])
    assert "Read-only file system" in line and "--out" in line
