"""The performance suite's pure pieces, and a tiny run of its sections (figures are not checked here:
speed targets live in `python -m bench`, never in timed unit tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the checkout, not part of the installed package

from bench.baselines import baseline_flops  # noqa: E402
from bench.common import VAR_SCALES, perturbed  # noqa: E402
from bench.memory import kv_cache_bytes  # noqa: E402
from bench.resolution import fitted_exponent, schedule_ending_at  # noqa: E402
from bench.run import SuiteConfig, main  # noqa: E402
from bench.sampling import FUNCTIONS, METHODS, timed_parts  # noqa: E402
from nextscale.sampling import sampler  # noqa: E402
from nextscale.transformer import NextScaleTransformer, TransformerConfig  # noqa: E402


def test_schedules_stretch_var_and_start_at_one() -> None:
    assert schedule_ending_at(16) == VAR_SCALES
    assert schedule_ending_at(8) == (1, 2, 3, 4, 5, 6, 8)
    for side in (8, 12, 24, 32):
        sizes = schedule_ending_at(side)
        assert sizes[0] == 1 and sizes[-1] == side and list(sizes) == sorted(set(sizes))


def test_fitted_exponent_recovers_a_power_law() -> None:
    tokens = [100.0, 300.0, 1000.0, 3000.0]
    assert fitted_exponent(tokens, [2e-3 * t**1.5 for t in tokens]) == pytest.approx(1.5)


def test_timed_parts_wrap_what_the_loop_calls() -> None:
    """The time share per part wraps these names: a refactor that renames them must update the suite."""
    for owner, name, _ in METHODS:
        assert name in owner.__dict__, f"{owner.__name__}.{name}"
    for name, _ in FUNCTIONS:
        assert hasattr(sampler, name), name
    with timed_parts(torch.device("cpu")) as parts:
        assert set(parts) == {"transformer", "filter+draw", "tokenizer", "text"}
    assert all(owner.__dict__[name].__name__ != "wrapper" for owner, name, _ in METHODS)  # restored


def test_equal_backbone_flops_favour_next_scale_over_diffusion() -> None:
    config = TransformerConfig(depth=2, width=64, num_heads=2, scale_sizes=(1, 2, 4), vocab_size=64, text_width=384)
    flops = baseline_flops(perturbed(NextScaleTransformer(config)), batch=1)
    assert flops["diffusion 50"] == pytest.approx(2 * flops["diffusion 25"])
    assert flops["diffusion 25"] > flops["next-scale"] > 0 and flops["raster AR"] > 0


def test_suite_runs_and_writes_json(tmp_path: Path) -> None:
    # small matrices: a CPU without native bf16 emulates it, and the default 2048 side took minutes there
    results = main(SuiteConfig(sections=("peak",), repeats=1, peak_sizes=(128, 256), out=tmp_path, clock="cpu"))
    written = json.loads((tmp_path / "suite.json").read_text())
    assert written["peak_flops"] == results["peak_flops"] and written["peak_flops"]["float32"] > 0
    assert written["machine"]["clock"] == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_equal_the_formula(dtype: torch.dtype) -> None:
    config = TransformerConfig(depth=2, width=64, num_heads=2, scale_sizes=(1, 2, 4), vocab_size=64, text_width=384)
    entry = kv_cache_bytes(config, 3, torch.device("cpu"), dtype)
    bytes_per_value = 4 if dtype == torch.float32 else 2
    assert entry["measured_bytes"] == entry["formula_bytes"] == 2 * 2 * 6 * 21 * 64 * bytes_per_value  # depth 2, 6 rows


def test_loading_bench_compares_two_loads_of_the_same_weights(tmp_path: Path) -> None:
    """`bench/loading.py`'s yardstick (build, then copy) and `from_pretrained` give the same model."""
    from bench.loading import LoadingBenchConfig, build_then_copy
    from bench.loading import main as loading_main

    config = TransformerConfig.var(2, num_classes=10, cross_attention=False)
    directory = NextScaleTransformer(config).save_pretrained(tmp_path / "transformer")
    built, loaded = build_then_copy(directory), NextScaleTransformer.from_pretrained(directory)
    for name, value in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    report = loading_main(LoadingBenchConfig(depth=1, repeats=1))
    assert set(report["seconds"]) == set(report["peak_bytes"]) == {"from_pretrained", "build, then copy"}
    assert all(seconds > 0 for seconds in report["seconds"].values())
    assert all(rise >= 0 for rise in report["peak_bytes"].values())  # a tiny model may fit in memory already held


def test_precision_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """`python -m bench.precision` on the bundled model and a tiny VAR-shaped one: every variant is timed
    against float32, the reference's own difference is nil, and the file is written."""
    from bench.precision import PrecisionBenchConfig
    from bench.precision import main as precision_main

    config = PrecisionBenchConfig(batches=(1,), repeats=1, variants=("float32", "int8"), var_depth=1, var_width=64,
                                  var_scales=(1, 2, 4), var_decoder_channels=32, out=tmp_path)
    results = precision_main(config)
    assert set(results["models"]) == {"demo", "var"}
    for entry in results["models"].values():
        reference, int8 = entry["rows"]
        assert (reference["variant"], int8["variant"]) == ("float32", "int8")
        assert reference["ratio"] == 1.0 and reference["equal_codes"] == 1.0 and reference["max_abs"] == 0.0
        assert int8["seconds"] > 0 and 0.0 <= int8["equal_codes"] <= 1.0
    assert json.loads((tmp_path / "precision.json").read_text())["machine"]["clock"] == "cpu"
