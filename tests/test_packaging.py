"""The installed layout: one `nextscale` package, parts that load only what they need, a source registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nextscale.data import DataConfig, build_dataset, source_names, sources
from nextscale.data.sources import Source, get_source, register_source


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_app_folder_with_generic_module_names_imports_nextscale(tmp_path: Path) -> None:
    # An application with its own tokenizer.py / train.py / sampling.py beside it: Python puts the
    # current folder first on sys.path, so generic top-level packages of ours would be shadowed.
    for name in ("tokenizer", "train", "sampling", "transformer"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the application\\'s own {name}.py was imported')\n")
    result = run_python(
        "from nextscale.sampling import generate, load_pipeline\n"
        "from nextscale.data import DataConfig\n"
        "from nextscale.tokenizer import MultiScaleVQVAE\n"
        "import nextscale.transformer\n"
        "print('ok')",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def modules_loaded_by(imports: str, prefixes: tuple[str, ...], cwd: Path) -> str:
    """The modules under `prefixes` that a fresh interpreter has loaded after `import <imports>`."""
    result = run_python(
        f"import sys, {imports}\nprint(sorted(m for m in sys.modules if m.startswith({prefixes!r})))", cwd
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_transformer_does_not_load_the_autoencoder(tmp_path: Path) -> None:
    imports = "nextscale.transformer, nextscale.transformer.var_weights"
    assert modules_loaded_by(imports, ("nextscale.tokenizer", "nextscale.train"), tmp_path) == "[]"


def test_training_losses_are_not_loaded_for_inference(tmp_path: Path) -> None:
    assert modules_loaded_by("nextscale.sampling", ("nextscale.tokenizer.losses", "nextscale.train"), tmp_path) == "[]"


def test_data_source_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"synthetic", "folder", "webdataset"} <= set(source_names())
    synthetic = build_dataset(DataConfig(image_size=16, synthetic_length=3))
    monkeypatch.setattr(sources, "_SOURCES", dict(sources._SOURCES))  # registered for this test only
    register_source(Source("three-synthetic", lambda config, shuffle: synthetic, needs_path=False))
    config = DataConfig(source="three-synthetic")
    assert build_dataset(config) is synthetic
    assert get_source("three-synthetic").held_out is None
    with pytest.raises(ValueError, match="two data sources are named 'folder'"):
        register_source(Source("folder", lambda config, shuffle: synthetic))
    with pytest.raises(ValueError, match="unknown data source 'nope'; choose one of"):
        DataConfig(source="nope")


def test_every_subpackage_is_in_the_wheel() -> None:
    # setuptools' explicit `packages` list: a new folder with an __init__.py that is not listed would work
    # in an editable install and be missing from the wheel.
    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder).parts
            found.add(".".join((package, *relative)))
    assert found - listed == set(), f"packages missing from pyproject's list: {sorted(found - listed)}"
