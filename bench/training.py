"""Training throughput (transformer and tokenizer steps, fp32 vs bf16 autocast) and attention backends."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import TEXT_LENGTH, TEXT_WIDTH, median_seconds, synchronize
from nextscale.scales import block_causal_mask, scale_index
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.transformer import NextScaleTransformer, TransformerConfig, attention, naive_attention
from nextscale.transformer.flops import training_flops


def autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def transformer_step(
    model: NextScaleTransformer,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    codes: torch.Tensor,
    device: torch.device,
    bf16: bool,
) -> None:
    with autocast(device, bf16):
        logits = model(**inputs)  # (b, L, vocab) fp32
    loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(device)


def tokenizer_step(
    model: MultiScaleVQVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, device: torch.device, bf16: bool
) -> None:
    with autocast(device, bf16):
        out = model(images)
    loss = F.l1_loss(out.reconstruction.float(), images) + out.quantization_loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(device)


def counted_flops(function: Any) -> float:
    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


def training_section(
    shape: TransformerConfig, batch: int, repeats: int, device: torch.device, peaks: dict[str, float]
) -> dict[str, Any]:
    """Tokens/s (transformer) and images/s (tokenizer) per step, fp32 and bf16 autocast side by side.
    Utilisation: 3x the analytic forward FLOPs (forward + backward) for the transformer; the tokenizer's
    step FLOPs as FlopCounterMode counts them (convolutions included)."""
    torch.manual_seed(0)
    model = NextScaleTransformer(shape).to(device).train()
    length = shape.num_tokens
    text_mask = torch.ones(batch, TEXT_LENGTH, dtype=torch.bool, device=device)
    text_mask[:, 12:] = False  # captions of ~12 word pieces padded to 32, as the offline encoder
    inputs = {
        "teacher_inputs": torch.randn(batch, length - 1, shape.latent_dim, device=device),
        "text_tokens": torch.randn(batch, TEXT_LENGTH, TEXT_WIDTH, device=device),
        "text_mask": text_mask,
        "text_pooled": torch.randn(batch, TEXT_WIDTH, device=device),
    }
    codes = torch.randint(0, shape.vocab_size, (batch, length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokenizer = MultiScaleVQVAE(TokenizerConfig()).to(device).train()
    tokenizer_optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=1e-5)
    images = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    steps = {}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        steps[f"transformer {name}"] = partial(transformer_step, model, optimizer, inputs, codes, device, bf16)
        steps[f"tokenizer {name}"] = partial(tokenizer_step, tokenizer, tokenizer_optimizer, images, device, bf16)
    seconds = median_seconds(steps, repeats)
    transformer_flops = training_flops(shape, TEXT_LENGTH, batch)
    tokenizer_flops = counted_flops(steps["tokenizer float32"])
    result: dict[str, Any] = {"batch": batch, "tokens": length, "seconds": seconds}
    for name in ("float32", "bfloat16"):
        step = seconds[f"transformer {name}"]
        result[f"transformer {name}"] = {
            "tokens_per_second": batch * length / step,
            "utilisation": transformer_flops / step / peaks[name],
        }
        step = seconds[f"tokenizer {name}"]
        result[f"tokenizer {name}"] = {
            "images_per_second": batch / step,
            "utilisation": tokenizer_flops / step / peaks[name],
        }
    return result


def flex_attention_function(scale_sizes: tuple[int, ...], length: int, device: torch.device) -> Any:
    """FlexAttention with a block mask of the block-causal rule, compiled (eager flex is a reference
    implementation); None where this torch or device cannot run it."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        level = scale_index(scale_sizes, device)

        def block_causal(batch: Any, head: Any, query: Any, key: Any) -> Any:
            return level[key] <= level[query]

        block_mask = create_block_mask(block_causal, None, None, length, length, device=str(device))
        compiled = torch.compile(flex_attention)
        return partial(compiled, block_mask=block_mask)
    except Exception:  # older torch, no compiler for this device
        return None


@torch.no_grad()
def attention_section(
    layouts: dict[str, tuple[int, ...]], batch: int, heads: int, repeats: int, device: torch.device, flex: bool
) -> dict[str, Any]:
    """Block-causal self-attention forward, fp32: SDPA with the boolean mask vs naive vs FlexAttention."""
    result: dict[str, Any] = {}
    for name, scale_sizes in layouts.items():
        mask = block_causal_mask(scale_sizes, device)  # (L, L)
        length = mask.shape[0]
        generator = torch.Generator().manual_seed(0)
        query, key, value = (torch.randn(batch, heads, length, 64, generator=generator).to(device) for _ in range(3))
        reference = naive_attention(query, key, value, mask)
        functions: dict[str, Any] = {
            "sdpa + mask": partial(attention, query, key, value, mask),
            "naive": partial(naive_attention, query, key, value, mask),
        }
        notes = {}
        flex_function = flex_attention_function(scale_sizes, length, device) if flex else None
        if flex_function is not None:
            try:
                torch.testing.assert_close(flex_function(query, key, value), reference, atol=1e-4, rtol=1e-4)
                functions["flex + block mask"] = partial(flex_function, query, key, value)
            except Exception as error:  # compile failure on this machine: reported, not fatal
                notes["flex"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        elif flex:
            notes["flex"] = "not supported by this torch on this device"
        seconds = median_seconds(functions, repeats)
        result[name] = {"tokens": length, "seconds": seconds, "notes": notes}
    return result
