"""The measurements behind the CPU int8 path and the bf16 decoder (docs/experiments/int8-and-fast-decoder.md).

    python -m experiments.int8_kernels kernels    # one linear layer: fp32, bf16, torch's int8, torchao's int8
    python -m experiments.int8_kernels logits     # the bundled model: int8 variants' teacher-forced logits vs fp32
    python -m experiments.int8_kernels decoder    # the bundled decoder in bf16: pixels and the judge vs fp32

One thread, CPU time (a shared CPU). torchao is optional: its rows are skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from nextscale.sampling import precision
from nextscale.sampling.pipeline import DEMO_PIPELINE, load_pipeline
from nextscale.sampling.sampler import SamplingConfig, encode_text, generate

SHAPES = ((256, 1024), (1024, 4096), (4096, 1024))  # (in, out): the demo's MLP, VAR-d16's MLP
ROWS = (2, 32, 512, 4096)  # tokens x rows of one call: a small scale at batch 1 up to the last scale at batch 8


def cpu_microseconds(function: Callable[[], object], budget: float = 0.4) -> float:
    function()
    function()
    start, calls = time.process_time(), 0
    while time.process_time() - start < budget:
        function()
        calls += 1
    return (time.process_time() - start) / calls * 1e6


def torchao_linears(linear: nn.Linear) -> dict[str, nn.Module]:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return {}
    out = {}
    for name, config in (("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int8 weight-only", Int8WeightOnlyConfig())):
        module = nn.Sequential(copy.deepcopy(linear))
        quantize_(module, config)
        out[name] = module
    return out


@torch.inference_mode()
def kernels() -> None:
    for in_features, out_features in SHAPES:
        for rows in ROWS:
            if in_features == 256 and rows == 4096:
                continue
            linear = nn.Linear(in_features, out_features).eval()
            x = torch.randn(rows, in_features)
            modules: dict[str, tuple[nn.Module, torch.Tensor]] = {
                "fp32": (linear, x), "bf16": (copy.deepcopy(linear).bfloat16(), x.bfloat16()),
                "torch int8, 7-bit inputs": (precision.Int8Linear(linear, full_range=False), x),
                "torch int8, 8-bit inputs": (precision.Int8Linear(linear, full_range=True), x),
            }
            modules.update({name: (module, x) for name, module in torchao_linears(linear).items()})
            cells = [f"{name} {cpu_microseconds(lambda m=m, i=i: m(i)):.0f}" for name, (m, i) in modules.items()]
            print(f"{in_features}->{out_features}, {rows} rows (us): " + ", ".join(cells), flush=True)


def quantized_copy(model: nn.Module, skip: tuple[str, ...], full_range: bool) -> nn.Module:
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        precision.fold_query_value_biases(module)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not any(part in name for part in ("input_embed", *skip)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, precision.Int8Linear(module, full_range))
    return model


@torch.no_grad()
def logits() -> None:
    pipeline = load_pipeline(None)
    prompts = ["a man with a beard on a blue background", "a woman with red hair on a green background",
               "a man with glasses on a yellow background", "a woman with blond hair on a purple background"] * 4
    codes = generate(pipeline, prompts, list(range(16)), SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)).codes
    inputs = pipeline.tokenizer.teacher_inputs(codes)
    text = encode_text(pipeline, prompts, False, torch.float32)
    reference = pipeline.transformer(inputs, **text)
    for label, skip, full_range in (("every linear, 7-bit inputs", (), False), ("every linear, 8-bit inputs", (), True),
                                    ("8-bit inputs, head in fp32", ("head",), True)):
        out = quantized_copy(pipeline.transformer, skip, full_range)(inputs, **text)
        agree = float((out.argmax(-1) == reference.argmax(-1)).float().mean())
        kl = float(torch.nn.functional.kl_div(out.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                              reduction="none").sum(-1).mean())
        print(f"{label}: argmax agreement {agree:.4f}, KL to fp32 {kl:.5f}, "
              f"mean |diff| / std {float((out - reference).abs().mean() / reference.std()):.4f}", flush=True)


@torch.no_grad()
def decoder() -> None:
    from nextscale.portraits.adherence import prompt_set
    from nextscale.portraits.judge import AttributeJudge

    exact, fast = load_pipeline(None), load_pipeline(None, decoder_dtype="bfloat16")
    singles, _ = prompt_set(12, 0)
    prompts = [spec.text for spec in singles for _ in range(4)]
    codes = [generate(exact, prompts[i : i + 16], list(range(i, i + 16)),
                      SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)).codes for i in range(0, len(prompts), 16)]
    latent = torch.cat([exact.tokenizer.quantizer.codes_to_accumulated(c) for c in codes])
    a, b = exact.tokenizer.decode_latent(latent), fast.tokenizer.decode_latent(latent)
    gap = (a - b).abs()
    judge = AttributeJudge.from_pretrained(DEMO_PIPELINE / "judge")
    same = float((judge.predict_indices(a) == judge.predict_indices(b)).float().mean())
    print(f"{len(prompts)} images: max |diff| {float(gap.max()):.4f}, mean {float(gap.mean()):.5f}, PSNR "
          f"{10 * math.log10(4 / float((gap ** 2).mean())):.1f} dB, judged attributes equal {same:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("kernels", "logits", "decoder"))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    {"kernels": kernels, "logits": logits, "decoder": decoder}[parser.parse_args().what]()


if __name__ == "__main__":
    main()
