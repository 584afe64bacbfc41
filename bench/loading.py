"""Loading a saved transformer: `from_pretrained` against building the model and copying the weights in.

    python bench/loading.py                 # VAR-d16's shape (310M parameters, class-conditional)
    python bench/loading.py --depth 24      # VAR-d24 (1.0B)

`from_pretrained` builds the parameters on the meta device and takes the loaded tensors as they are;
the yardstick is what it did before: build the model (every parameter randomly initialised) and copy
the loaded tensors into it. Both read the same safetensors file (written once, float32, random
weights: speed does not depend on them), and each load ends by reading every weight once (a sum), so
pages the operating system reads lazily are counted; runs alternate and the median of each is
reported, so the ratio is measured side by side under the same load. Peak memory is not measured here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from safetensors.torch import load_file

from nextscale.transformer import NextScaleTransformer, TransformerConfig


@dataclass(frozen=True)
class LoadingBenchConfig:
    """Knobs of the benchmark."""

    depth: int = 16
    """VAR depth of the model (`TransformerConfig.var`: width 64 x depth, 1000 classes)."""
    repeats: int = 5
    """Loads per way; the median is reported."""
    threads: int = 1
    """torch.set_num_threads."""


def build_then_copy(directory: Path) -> NextScaleTransformer:
    """The former loading: a randomly initialised model, then the weights copied into it."""
    model = NextScaleTransformer(NextScaleTransformer.load_config(directory))
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()


def main(config: LoadingBenchConfig) -> dict[str, float]:
    torch.set_num_threads(config.threads)
    model_config = TransformerConfig.var(config.depth, num_classes=1000, cross_attention=False)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "transformer"
        NextScaleTransformer(model_config).save_pretrained(directory)
        size = (directory / "model.safetensors").stat().st_size
        ways = {"from_pretrained": NextScaleTransformer.from_pretrained, "build, then copy": build_then_copy}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(config.repeats):
            for name, load in ways.items():
                start = time.perf_counter()
                model = load(directory)
                with torch.no_grad():  # touch every weight: lazily read pages count as loading
                    sum(float(parameter.sum()) for parameter in model.parameters())
                times[name].append(time.perf_counter() - start)
                del model
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"torch {torch.__version__}, {config.threads} thread(s), VAR-d{config.depth} shape, "
          f"{size / 2**30:.2f} GiB of float32 weights, median of {config.repeats} alternating loads")
    for name, seconds in medians.items():
        print(f"  {name:<18} {seconds:7.2f} s")
    print(f"  from_pretrained takes {medians['from_pretrained'] / medians['build, then copy']:.3f}x the time "
          f"of building, then copying")
    return medians


if __name__ == "__main__":
    main(tyro.cli(LoadingBenchConfig))
