"""Inference precisions beyond a plain dtype: int8 weights on CPUs and a bf16 decoder beside an fp32 pipeline.

`int8` (`load_pipeline(dtype="int8")`, `sample.py --dtype int8`): every linear layer of the transformer
except the latent embedding and the output head holds int8 weights (one scale per output channel) and quantises its
input on the fly to uint8 (one scale per call), through torch's dynamic quantisation kernels (fbgemm;
VNNI dot products where the CPU has them). Everything else (embeddings, norms, attention, the sampling
arithmetic, the tokenizer and the text encoder) stays float32. It is a CPU path: torch has no such kernels
on a GPU, where bfloat16 is the fast choice. torchao's int8 configurations were measured too and were
slower here in eager mode; the measurement and the quality check are in
docs/experiments/int8-and-fast-decoder.md.

`decoder_dtype="auto"` (`sample.py --decoder-dtype auto`, the command line's default): on a CPU that
computes bf16 natively (AVX512-BF16 or AMX), the tokenizer's decoder runs with bf16 weights in the
channels-last layout while the quantizer and the latent stay float32; elsewhere it stays as loaded.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

INT8 = "int8"
DTYPES: dict[str, torch.dtype | str] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16, INT8: INT8}
"""The names the command line, the web UI and the evaluation take for a pipeline's precision."""
DecoderDtype = Literal["auto", "float32", "bfloat16"]
DECODER_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
KEPT_IN_FLOAT = ("input_embed", "head")
"""Linear layers int8 leaves in float: the latent embedding (latent_dim inputs) and the output head, whose
error lands on the logits unmixed; both are a few percent of the weights."""


def has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX; torch's own probes)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot products, which accumulate u8 x s8 products without the 16-bit
    saturation of older x86 instructions, so activations may use all 8 bits."""
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def int8_available() -> str | None:
    """None when torch has its dynamic int8 linear kernels here, else the reason in one line."""
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm")):
        return f"this torch build has no x86 int8 kernels (quantized engines: {engines}); use --dtype bfloat16"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return "this torch build has no quantized.linear_dynamic; use --dtype bfloat16"
    return None


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel, symmetric) and an input quantised per call:
    y = dequantise(quantise(x) @ W_int8^T) + bias, in float32 (torch's `quantized.linear_dynamic`)."""

    def __init__(self, linear: nn.Linear, full_range: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = not full_range
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        with warnings.catch_warnings():  # torch flags its quantised tensors as deprecated; the kernels are current
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                                   torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self.packed, self.reduce_range)
        return out.view(*shape[:-1], self.out_features).to(x.dtype)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        raise ValueError("an int8 model is for sampling and has no float weights to save: save the model loaded "
                         "in float32 (load_pipeline without dtype=\"int8\")")

    def extra_repr(self) -> str:
        bits = 7 if self.reduce_range else 8
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, {bits}-bit inputs"


def fold_query_value_biases(module: nn.Module) -> None:
    """Self-attention without a key bias (VAR) keeps its query and value biases apart from `qkv`: put them
    into `qkv`'s bias (zero for the keys), so that `qkv` alone computes the projection (same result)."""
    query_bias, value_bias = getattr(module, "query_bias", None), getattr(module, "value_bias", None)
    qkv = getattr(module, "qkv", None)
    if query_bias is None or value_bias is None or not isinstance(qkv, nn.Linear) or qkv.bias is not None:
        return
    bias = torch.cat([query_bias.detach(), torch.zeros_like(query_bias.detach()), value_bias.detach()])
    qkv.bias = nn.Parameter(bias, requires_grad=False)
    module.query_bias = None
    module.value_bias = None


def quantize_int8(transformer: nn.Module) -> nn.Module:
    """Replace the transformer's linear layers (all but `KEPT_IN_FLOAT`) by `Int8Linear`, in place; the model
    must be a float32 model on the CPU, in eval mode. Returns it."""
    reason = int8_available()
    if reason is not None:
        raise ValueError(f"int8 is not available: {reason}")
    parameter = next(transformer.parameters())
    if parameter.device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only (got a model on {parameter.device}); use bfloat16 on a GPU")
    if parameter.dtype != torch.float32:
        raise ValueError(f"int8 quantises a float32 model, got {parameter.dtype}")
    transformer.eval()
    for module in list(transformer.modules()):
        fold_query_value_biases(module)
    full_range = has_vnni()
    targets = [(name, module) for name, module in transformer.named_modules()
               if isinstance(module, nn.Linear) and name.split(".")[-1] not in KEPT_IN_FLOAT]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        setattr(parent, child, Int8Linear(module, full_range))
    return transformer


def is_int8(transformer: nn.Module) -> bool:
    """Whether `quantize_int8` was applied to this model."""
    return any(isinstance(module, Int8Linear) for module in transformer.modules())


def resolve_decoder_dtype(choice: str | torch.dtype | None, device: torch.device,
                          weights: torch.dtype) -> torch.dtype | None:
    """The dtype the decoder should run in, or None to leave it as loaded. `auto`: bf16 on a CPU with native
    bf16 when the weights are float32 (int8 pipelines included), else as loaded."""
    if choice is None:
        return None
    if isinstance(choice, torch.dtype):
        return choice
    if choice not in DECODER_DTYPES:
        raise ValueError(f"decoder_dtype must be one of {list(DECODER_DTYPES)} or a torch.dtype, got {choice!r}")
    if choice == "auto":
        fast = device.type == "cpu" and weights == torch.float32 and has_native_bf16()
        return torch.bfloat16 if fast else None
    return DTYPES[choice]  # type: ignore[return-value]


def set_decoder_dtype(tokenizer: nn.Module, dtype: torch.dtype) -> None:
    """Cast the tokenizer's decoder to `dtype`, channels-last on the CPU when reduced (the quantizer keeps its
    dtype; `decode_latent` hands the decoder the latent in its dtype and returns the latent's)."""
    decoder = tokenizer.decoder
    decoder.to(dtype)
    device = next(decoder.parameters()).device
    if device.type == "cpu" and dtype != torch.float32:
        decoder.to(memory_format=torch.channels_last)


def decoder_dtype(tokenizer: nn.Module) -> torch.dtype:
    """The dtype the tokenizer's decoder runs in."""
    return next(tokenizer.decoder.parameters()).dtype


def check_precision(dtype: torch.dtype | str, device: torch.device) -> None:
    """Before loading: `dtype` is a torch.dtype or "int8", and int8 is asked for on a CPU that has its kernels
    (a ValueError in one line otherwise)."""
    if isinstance(dtype, torch.dtype):
        return
    if dtype != INT8:
        raise ValueError(f"dtype must be a torch.dtype or {INT8!r}, got {dtype!r}")
    if device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only (got device {device}); use bfloat16 on a GPU")
    reason = int8_available()
    if reason is not None:
        raise ValueError(f"int8 is not available: {reason}")


def apply_precision(tokenizer: nn.Module, transformer: nn.Module, dtype: torch.dtype | str,
                    decoder: str | torch.dtype | None = None) -> tuple[nn.Module, nn.Module]:
    """Cast a loaded tokenizer and transformer to `dtype` ("int8": float32, then `quantize_int8`), and the
    decoder as `decoder` says (`resolve_decoder_dtype`). Returns both (changed in place)."""
    weights = torch.float32 if dtype == INT8 else dtype
    assert isinstance(weights, torch.dtype)
    tokenizer, transformer = tokenizer.to(weights), transformer.to(weights)
    if dtype == INT8:
        if any("lora_" in name for name, _ in transformer.named_modules()):
            raise ValueError("int8 does not take a LoRA adapter on top: merge it first "
                             "(python -m nextscale.sampling.adapters merge), then load the merged pipeline in int8")
        quantize_int8(transformer)
    device = next(tokenizer.parameters()).device
    chosen = resolve_decoder_dtype(decoder, device, weights)
    if chosen is not None:
        set_decoder_dtype(tokenizer, chosen)
    return tokenizer, transformer
