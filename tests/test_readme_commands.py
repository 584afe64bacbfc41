"""Every `python sample.py ...` command in README.md's shell code blocks runs, against the bundled model.

Each command runs as written in a temporary directory, with these changes: `--out` goes to that directory
(added when missing), `--no-progress` is added, `--checkpoint` points at the bundled demo (the README's
own runs, e.g. `runs/my64/var/pipeline`, do not exist here), and the input files it names are made first:
an RGB portrait-sized image for `--image` (e.g. `photo.png`), a mask of the same size with a white band
for `--mask` (e.g. `mask.png`), a prompt per line for `--prompts-file`. The README keeps such commands few
and fast: the bundled model is 64 px and samples in about a second on a CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO = ROOT / "checkpoints" / "demo"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
MAX_COMMANDS = 6
"""More than this many sample commands in the README makes this test slow: keep the README's examples few."""

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)


def shell_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced code blocks marked bash, sh, shell, console or zsh."""
    blocks = []
    for match in FENCE.finditer(markdown):
        language = match.group("info").strip().split(" ")[0].lower()
        if language in SHELL_LANGUAGES:
            indent = match.group("indent")
            blocks.append("\n".join(line[len(indent):] if line.startswith(indent) else line
                                    for line in match.group("body").splitlines()))
    return blocks


def sample_commands(markdown: str) -> list[list[str]]:
    """Every `python sample.py ...` command of the shell blocks, as argument lists (continuation lines
    joined, comments dropped, a console prompt `$ ` removed)."""
    commands = []
    for block in shell_blocks(markdown):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = re.sub(r"^\s*\$\s+", "", line)
            words = shlex.split(line, comments=True)
            if words[:2] == ["python", "sample.py"]:
                commands.append(words[2:])
    return commands


def option_value(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def make_inputs(args: list[str], directory: Path) -> None:
    """Create the files the command reads, at the paths it names (relative to `directory`)."""
    image = option_value(args, "--image")
    if image is not None:
        picture = Image.new("RGB", (64, 64), (70, 110, 190))
        draw = ImageDraw.Draw(picture)
        draw.ellipse((18, 12, 46, 48), fill=(224, 172, 140))
        draw.rectangle((14, 48, 50, 64), fill=(120, 60, 40))
        (directory / image).parent.mkdir(parents=True, exist_ok=True)
        picture.save(directory / image)
    mask = option_value(args, "--mask")
    if mask is not None:
        band = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(band).rectangle((12, 22, 52, 34), fill=255)  # white = regenerate: the eyes
        (directory / mask).parent.mkdir(parents=True, exist_ok=True)
        band.save(directory / mask)
    prompts = option_value(args, "--prompts-file")
    if prompts is not None:
        (directory / prompts).write_text("a man with a beard\na woman with glasses\n", encoding="utf-8")


def prepared(args: list[str], out: Path) -> list[str]:
    """The command's arguments with `--out`, `--no-progress` and `--checkpoint` set for the test."""
    args = list(args)
    if "--out" in args:
        args[args.index("--out") + 1] = str(out)
    else:
        args += ["--out", str(out)]
    if "--checkpoint" in args:
        args[args.index("--checkpoint") + 1] = str(DEMO)
    if "--no-progress" not in args and "--progress" not in args:
        args.append("--no-progress")
    return args


COMMANDS = sample_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_a_few_sample_commands():
    assert COMMANDS, "README.md has no `python sample.py ...` command in a bash block"
    assert ["--prompt", "a man with a beard"] in COMMANDS, "the README's first command is gone"
    assert len(COMMANDS) <= MAX_COMMANDS, (f"README.md has {len(COMMANDS)} sample commands; keep at most "
                                           f"{MAX_COMMANDS} (each runs in this test)")


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(args)[:60] for args in COMMANDS])
def test_readme_sample_command_runs_on_the_bundled_model(args: list[str], tmp_path: Path):
    make_inputs(args, tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "sample.py"), *prepared(args, out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"python sample.py {shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    assert sorted(out.glob("*.png")), f"python sample.py {shlex.join(args)} wrote no image to --out"


def test_the_command_parser_reads_blocks_as_a_shell_would():
    markdown = (
        "```bash\n"
        "python sample.py --prompt \"a man\" \\\n    --num-images 2   # a comment\n"
        "python train_var.py --steps 1\n"
        "```\n"
        "```python\npython sample.py --prompt ignored\n```\n"
        "   ```console\n   $ python sample.py --image photo.png --mask mask.png --prompt 'a, b'\n   ```\n"
    )
    assert sample_commands(markdown) == [["--prompt", "a man", "--num-images", "2"],
                                         ["--image", "photo.png", "--mask", "mask.png", "--prompt", "a, b"]]
    args = prepared(["--checkpoint", "runs/x/pipeline", "--prompt", "p", "--out", "samples"], Path("/o"))
    assert args == ["--checkpoint", str(DEMO), "--prompt", "p", "--out", "/o", "--no-progress"]
