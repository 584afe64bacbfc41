"""Loading a saved transformer: `from_pretrained` against building the model and copying the weights in.

    python bench/loading.py                 # VAR-d16's shape (310M parameters, class-conditional)
    python bench/loading.py --depth 24      # VAR-d24 (1.0B)

`from_pretrained` builds the parameters on the meta device and takes the loaded tensors as they are;
the yardstick is what it did before: build the model (every parameter randomly initialised) and copy
the loaded tensors into it. Both read the same safetensors file (written once, float32, random
weights: speed does not depend on them), and each load ends by reading every weight once (a sum), so
pages the operating system reads lazily are counted; runs alternate and the median of each is
reported, so the ratio is measured side by side under the same load. Peak memory: each way loads once
more in a fresh process, which reports how far its peak resident memory (Linux `VmHWM`) rose during
the load (mapped file pages that the load reads count).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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


WAYS = {"from_pretrained": NextScaleTransformer.from_pretrained, "build, then copy": build_then_copy}


def load_and_touch(name: str, directory: Path) -> NextScaleTransformer:
    """Load one way, then read every weight once (pages the operating system reads lazily count)."""
    model = WAYS[name](directory)
    with torch.no_grad():
        sum(float(parameter.sum()) for parameter in model.parameters())
    return model


def peak_resident_bytes() -> int:
    """This process's peak resident memory (Linux `VmHWM`: the high-water mark of its own address space,
    which, unlike `getrusage`'s maximum, does not carry over from the parent of a spawned process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status: the peak memory measurement needs Linux")


def peak_rise_bytes(name: str, directory: Path, threads: int) -> int:
    """In a fresh process: how far the peak resident memory rises while loading `name`'s way."""
    torch.set_num_threads(threads)
    before = peak_resident_bytes()
    load_and_touch(name, directory)
    return peak_resident_bytes() - before


def main(config: LoadingBenchConfig) -> dict[str, dict[str, float]]:
    """Time both ways and measure their peak memory; returns {"seconds": medians, "peak_bytes": rises} by way."""
    torch.set_num_threads(config.threads)
    model_config = TransformerConfig.var(config.depth, num_classes=1000, cross_attention=False)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "transformer"
        NextScaleTransformer(model_config).save_pretrained(directory)
        size = (directory / "model.safetensors").stat().st_size
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(config.repeats):
            for name in WAYS:
                start = time.perf_counter()
                model = load_and_touch(name, directory)
                times[name].append(time.perf_counter() - start)
                del model
        peaks = {}
        for name in WAYS:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                peaks[name] = pool.submit(peak_rise_bytes, name, directory, config.threads).result()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"torch {torch.__version__}, {config.threads} thread(s), VAR-d{config.depth} shape, "
          f"{size / 2**30:.2f} GiB of float32 weights, median of {config.repeats} alternating loads")
    for name, seconds in medians.items():
        print(f"  {name:<18} {seconds:7.2f} s, peak memory rise {peaks[name] / 2**30:.2f} GiB")
    print(f"  from_pretrained takes {medians['from_pretrained'] / medians['build, then copy']:.3f}x the time "
          f"of building, then copying")
    return {"seconds": medians, "peak_bytes": {name: float(value) for name, value in peaks.items()}}


if __name__ == "__main__":
    main(tyro.cli(LoadingBenchConfig))
