"""Logit filtering and per-image sampling: temperature, top-k, top-p (nucleus), one generator per image.

Order as in Hugging Face `generate`: temperature, then top-k, then top-p, then a draw from the
softmax (VAR's `sample_with_top_k_top_p_` applies top-k then top-p the same way). Filtering never
empties a distribution: top-k and top-p always keep the most likely code, so every row keeps at
least one finite logit and the softmax never turns into NaN. Temperature 0 means greedy decoding
(argmax, no random numbers drawn), the limit of temperature -> 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the `top_k` largest logits of the last axis, set the rest to -inf.

    None, 0 or top_k >= vocabulary size leave the logits unchanged; top_k 1 keeps only the argmax.
    Ties with the k-th largest value are all kept (as VAR and Hugging Face do).
    """
    if top_k is None or top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely codes whose
    probability reaches `top_p`, set the rest to -inf.

    top_p >= 1 leaves the logits unchanged; top_p 0 (or tiny) keeps only the argmax, never nothing.
    Rows that are entirely -inf are returned as they are (there is nothing to keep).
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    mass_before = probabilities.cumsum(dim=-1) - probabilities  # probability of the more likely codes
    remove_sorted = mass_before >= top_p
    remove_sorted[..., 0] = False  # the most likely code always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float = 1.0, temperature: float = 1.0
) -> torch.Tensor:
    """Temperature (> 0), top-k and top-p applied to logits (..., V); returns fp32 logits."""
    if temperature <= 0:
        raise ValueError(f"filter_logits needs temperature > 0 (0 means greedy: use argmax), got {temperature}")
    logits = logits.float() / temperature
    return top_p_filter(top_k_filter(logits, top_k), top_p)


def sample_codes(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator],
    top_k: int | None = None,
    top_p: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Draw one code per token: logits (b, n, V) -> codes (b, n) long.

    Row i draws only from `generators[i]`, so an image's codes depend on its own seed and not on the
    rest of the batch. Temperature 0 is greedy (argmax) and draws nothing.
    """
    if logits.shape[0] != len(generators):
        raise ValueError(f"{logits.shape[0]} rows of logits but {len(generators)} generators: one per image")
    if torch.isnan(logits).any():
        raise ValueError("the transformer produced NaN logits (a float16 overflow? try --dtype float32)")
    if not bool((logits.amax(dim=-1) > float("-inf")).all()):
        raise ValueError("a token's logits are all -inf: there is no code to sample")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probabilities = filter_logits(logits, top_k, top_p, temperature).softmax(dim=-1)  # (b, n, V)
    return torch.stack(
        [
            torch.multinomial(row, 1, generator=generator).squeeze(-1)
            for row, generator in zip(probabilities, generators)
        ]
    )
