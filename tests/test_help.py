"""--help a person reads: each script's fits 150 lines and opens with the options a user sets first; -H lists
every option; no help text carries a measured figure; sample.py parses its editing and zoom options only
when one is given."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nextscale.cli_help import format_help
from nextscale.errors import print_help
from nextscale.sampling.cli import EDIT_FLAGS, PlainSampleArgs, SampleArgs, args_class
from nextscale.train.presets import help_entries
from nextscale.train.tokenizer_loop import TokenizerTrainConfig
from nextscale.train.var_loop import VarTrainConfig

ROOT = Path(__file__).resolve().parent.parent
FIRST = {
    "train_tokenizer.py": ["--preset", "--config", "--image-size", "--data.source", "--data.path", "--output-dir",
                           "--steps"],
    "train_var.py": ["--preset", "--config", "--tokenizer", "--data.source", "--data.path", "--condition",
                     "--text-encoder"],
    "sample.py": ["--prompt", "--prompts-file", "--class-label", "--num-images", "--seed", "--cfg"],
}
MEASURED = re.compile(r"\d[\d.,]*\s*(s/step|dB\b|%|img/s|tokens/s|ms\b)|\d+(\.\d+)?x (faster|slower|as long)")


def short_help_options(text: str) -> set[str]:
    """Every option the short help names: its entries, and the NAME (default) lists of groups in brief."""
    found, group = set(option_lines(text)), None
    for line in text.splitlines():
        heading = re.match(r"^(--[a-z][\w.-]*)\.\*:", line)
        if heading:
            group = heading.group(1)
        elif group and line.startswith("  ") and not line.lstrip().startswith("--"):
            found |= {f"{group}.{name}" for name in re.findall(r"(?:\[no-\])?([a-z][\w-]*) \(", line)}
        elif not line.startswith("  "):
            group = None
    return found


def option_lines(text: str) -> list[str]:
    """The options in the order the help lists them (an entry's first word; tyro's boxes stripped)."""
    entry = r"^(?:│ |  )(--[a-z][\w.-]*)(?=,| [A-Z{\[(]| *│?$)"
    return [match.group(1) for match in re.finditer(entry, text, re.MULTILINE)]


@pytest.mark.parametrize("script", FIRST)
def test_help_fits_150_lines_and_starts_with_the_common_options(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) <= 150, len(lines)
    assert lines[0].startswith(f"usage: {script}")
    listed = option_lines(done.stdout)
    assert listed[: len(FIRST[script])] == FIRST[script], listed[:10]
    assert not MEASURED.search(done.stdout), MEASURED.search(done.stdout)


@pytest.mark.parametrize("config_class", [TokenizerTrainConfig, VarTrainConfig])
def test_the_short_help_lists_every_option_and_verbose_help_describes_them(config_class):
    short = format_help(config_class, config_class(), "train.py", help_entries())
    verbose = io.StringIO()
    with contextlib.redirect_stdout(verbose):
        assert print_help(config_class, ["-H"], None, help_entries())
    tyro_options = {option for option in option_lines(verbose.getvalue()) if ".no-" not in option} - {"--help"}
    assert len(tyro_options) > 50 and tyro_options <= short_help_options(short), \
        tyro_options - short_help_options(short)
    assert "--preset" in verbose.getvalue() and not MEASURED.search(verbose.getvalue())
    assert len(short.splitlines()) <= 150


def test_help_shows_a_presets_values_as_the_defaults():
    done = subprocess.run([sys.executable, "train_var.py", "--preset", "var-d16", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Model width (embedding size of every token). (default: 1024)" in done.stdout
    assert "(default: 16)" in done.stdout.split("--model.num-heads", 1)[1].splitlines()[0]


def test_sample_parses_editing_and_zoom_options_only_when_one_is_given():
    assert args_class(["--prompt", "a man", "--num-images", "2"]) is PlainSampleArgs
    for argv in (["--image", "in.png"], ["--keep_scales=3"], ["--no-blend"], ["--zoom"], ["--zoom-factor", "4"],
                 ["--detail-prompt", "x"], ["--help"]):
        assert args_class(["--prompt", "a", *argv]) is SampleArgs, argv
    assert {"--image", "--mask", "--outpaint", "--scale-prompt", "--zoom-out", "--no-zoom"} <= EDIT_FLAGS
    import tyro

    plain = tyro.cli(PlainSampleArgs, args=["--prompt", "a man"])
    assert plain.editing == SampleArgs().editing and plain.zooming == SampleArgs().zooming
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        tyro.cli(PlainSampleArgs, args=["--prompt", "a", "--image", "in.png"])  # the plain parser has no --image
