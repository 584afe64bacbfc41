"""What every part of the suite shares: interleaved median timing, memory readings, random models."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nextscale.sampling.pipeline import Pipeline
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.transformer import OFFLINE_TEXT_ENCODER, NextScaleTransformer, TextEncoder, TransformerConfig

TEXT_LENGTH = 32  # the offline encoder's padded prompt length
TEXT_WIDTH = 384  # MiniLM, the packaged offline text encoder
VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's 256 px layout, 680 tokens
PROMPT = "a man with a beard and glasses on a blue background"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_CLOCK = ["wall"]


def set_clock(name: str) -> None:
    """Time every figure by `wall` clock or by the `cpu` time of this process. On a CPU shared with other
    jobs, CPU time (with a fixed thread count) is what the work costs; wall time adds the load's queueing."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {name!r}")
    _CLOCK[0] = name


def clock_name() -> str:
    return _CLOCK[0]


def now() -> float:
    """Seconds on the chosen clock."""
    return CLOCKS[_CLOCK[0]]()


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function over `repeats` runs after `warmup` runs. The runs are interleaved
    (a, b, c, a, b, c, ...), so a change in the machine's load hits every function alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = now()
            function()
            times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load_average() -> float:
    """One-minute load average of the machine (other processes slow every figure, ratios far less)."""
    return os.getloadavg()[0]


def rss_megabytes() -> float:
    """Current resident set size (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_megabytes() -> float:
    """Peak resident set size since the start or the last `reset_peak_rss`, in MB (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6  # kB of 1024 bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


_PEAK_BEFORE_RESETS = [0.0]


def suite_peak_rss_megabytes() -> float:
    """Peak resident set size of the whole process, across `reset_peak_rss` calls, in MB."""
    return max(_PEAK_BEFORE_RESETS[0], peak_rss_megabytes())


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: write 5 to /proc/self/clear_refs)."""
    _PEAK_BEFORE_RESETS[0] = suite_peak_rss_megabytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory (MB) of the block above what was in use before it: CUDA allocator peak on a GPU,
    resident set size on a CPU."""
    reading: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 1e6
        yield reading
        torch.cuda.synchronize()
        reading["peak_mb"] = torch.cuda.max_memory_allocated() / 1e6 - before
    else:
        before = rss_megabytes()
        reset_peak_rss()
        yield reading
        reading["peak_mb"] = peak_rss_megabytes() - before


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-zero AdaLN gates (a fresh init makes every block the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator).to(parameter.device))
    return model.eval()


def random_text(rows: int, device: torch.device, dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random text conditioning of the offline encoder's shape: all 32 positions real."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "text_tokens": torch.randn(rows, TEXT_LENGTH, TEXT_WIDTH, generator=generator).to(device, dtype),
        "text_mask": torch.ones(rows, TEXT_LENGTH, dtype=torch.bool, device=device),
        "text_pooled": torch.randn(rows, TEXT_WIDTH, generator=generator).to(device, dtype),
    }


def tokenizer_for(scale_sizes: tuple[int, ...], vocab_size: int) -> TokenizerConfig:
    """A tokenizer fitting the layout: the 64 px demo one (8x) for the demo scales, 16x for the others
    (image side = 16 * last scale, VAR's ratio), with a moderate decoder width (64 channels)."""
    if scale_sizes == TokenizerConfig().scale_sizes and vocab_size == TokenizerConfig().vocab_size:
        return TokenizerConfig()
    return TokenizerConfig(
        image_size=16 * scale_sizes[-1],
        vocab_size=vocab_size,
        scale_sizes=scale_sizes,
        channel_mult=(1, 1, 2, 2, 4),
        encoder_channels=64,
        decoder_channels=64,
    )


_TEXT_ENCODERS: dict[str, TextEncoder] = {}


def random_pipeline(shape: TransformerConfig, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """Random-weight pipeline of this transformer shape with its tokenizer and the packaged MiniLM."""
    key = str(device)
    if key not in _TEXT_ENCODERS:
        _TEXT_ENCODERS[key] = TextEncoder.from_pretrained(OFFLINE_TEXT_ENCODER, device=device)
    torch.manual_seed(0)
    tokenizer = MultiScaleVQVAE(tokenizer_for(shape.scale_sizes, shape.vocab_size)).eval()
    transformer = perturbed(NextScaleTransformer(shape))
    return Pipeline(tokenizer.to(device, dtype), transformer.to(device, dtype), _TEXT_ENCODERS[key])
