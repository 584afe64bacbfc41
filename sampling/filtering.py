"""Logit filtering and per-image sampling: temperature, top-k, top-p (nucleus), one generator per image.

Order as in Hugging Face `generate`: temperature, then top-k, then top-p, then a draw from the
softmax (VAR's `sample_with_top_k_top_p_` applies top-k then top-p the same way). Filtering never
empties a distribution: top-k and top-p always keep the most likely code, so every row keeps at
least one finite logit and the softmax never turns into NaN. Temperature 0 means greedy decoding
(argmax, no random numbers drawn), the limit of temperature -> 0.

`filter_logits` (with `top_k_filter` and `top_p_filter`) is the plain reference over the whole
vocabulary. `sample_codes`, the sampler's step, draws from the same distribution without touching
the whole vocabulary more than once: one `topk` keeps the k best logits already sorted, so the nucleus
is a cumulative sum over k values instead of a sort of V, and every token of every image draws at
once by inverse-CDF (`searchsorted` of one uniform number per token), with no per-image `multinomial`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Candidates:
    """The filtered distribution of every token in compact form: m candidate codes per token."""

    codes: torch.Tensor
    """(..., m) long: candidate codes, most likely first when a filter is on (vocabulary order when not)."""
    weights: torch.Tensor
    """(..., m) fp32, >= 0: unnormalised probabilities; 0 for codes the filters remove."""


class NonFiniteLogits(ValueError):
    """The transformer's logits hold NaN (the sampler adds the likely cause: `nan_cause`)."""


def nan_cause(dtype: torch.dtype) -> str:
    """What most likely made NaN logits in a transformer computing in `dtype`, and what to do."""
    if dtype == torch.float16:
        return "a float16 overflow? try --dtype float32"
    return (f"in {str(dtype).removeprefix('torch.')} that is no overflow: the model's weights are not finite (a "
            "damaged checkpoint, or one trained or converted wrongly); check it, or export it again")


def check_best_logits(best: torch.Tensor) -> None:
    """Refuse NaN logits and tokens with no finite logit, from each token's largest logit (...,).
    `max`, `topk` and `sort` all rank NaN above every number, so a NaN anywhere in a row shows here."""
    if torch.isnan(best).any():
        raise NonFiniteLogits("the transformer produced NaN logits")
    if not bool((best > float("-inf")).all()):
        raise ValueError("a token's logits are all -inf: there is no code to sample")


def candidates(
    logits: torch.Tensor, top_k: int | None = None, top_p: float = 1.0, temperature: float = 1.0
) -> Candidates:
    """The distribution `filter_logits(...).softmax(-1)` describes, over the codes it keeps (logits (..., V)).

    Top-k keeps exactly k codes (a tie with the k-th largest logit is broken by `topk`'s order, where
    `top_k_filter` keeps every tied code); top-p is then applied to the sorted k, as `top_p_filter` does.
    """
    if temperature <= 0:
        raise ValueError(f"candidates needs temperature > 0 (0 means greedy: use argmax), got {temperature}")
    vocab = logits.shape[-1]
    keep = vocab if top_k is None or top_k <= 0 or top_k >= vocab else top_k
    if keep == vocab and top_p >= 1.0:  # no filter: the whole vocabulary in its own order, nothing sorted
        check_best_logits(logits.amax(dim=-1))
        codes = torch.arange(vocab, device=logits.device).expand(logits.shape)  # a view, no copy
        return Candidates(codes, (logits.float() / temperature).softmax(dim=-1))
    if keep == vocab:
        values, codes = logits.sort(dim=-1, descending=True)  # (..., V)
    else:
        values, codes = logits.topk(keep, dim=-1)  # (..., k) sorted, most likely first
    check_best_logits(values[..., 0])
    weights = (values.float() / temperature).softmax(dim=-1)  # (..., m); -inf (ruled out) gives 0
    if top_p < 1.0:
        mass_before = weights.cumsum(dim=-1) - weights  # probability of the more likely candidates
        remove = mass_before >= top_p
        remove[..., 0] = False  # the most likely code always stays
        weights = weights.masked_fill_(remove, 0.0)
    return Candidates(codes, weights)


def draw(candidates: Candidates, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: uniforms (...,) in [0, 1) -> one code per token (...,) long, code i with
    probability weights[i] / sum(weights). A code of weight 0 is never drawn."""
    cumulative = candidates.weights.cumsum(dim=-1)  # (..., m) non-decreasing
    target = uniforms.unsqueeze(-1) * cumulative[..., -1:]  # (..., 1) in [0, total)
    index = torch.searchsorted(cumulative, target, right=True)  # first candidate whose cumulative > target
    index = index.clamp_(max=cumulative.shape[-1] - 1)  # float rounding at the very top
    return candidates.codes.gather(-1, index).squeeze(-1)


def sample_codes(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator],
    top_k: int | None = None,
    top_p: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Draw one code per token: logits (b, n, V) -> codes (b, n) long.

    Row i draws only from `generators[i]` (n uniform numbers), so an image's codes depend on its own
    seed and not on the rest of the batch. Temperature 0 is greedy (argmax) and draws nothing.
    """
    if logits.shape[0] != len(generators):
        raise ValueError(f"{logits.shape[0]} rows of logits but {len(generators)} generators: one per image")
    if temperature == 0:
        best, codes = logits.max(dim=-1)
        check_best_logits(best)
        return codes
    kept = candidates(logits, top_k, top_p, temperature)
    tokens = logits.shape[1]
    # n numbers from each image's own generator: the only per-image work, microseconds per scale
    uniforms = torch.stack(
        [torch.rand(tokens, generator=generator, device=logits.device) for generator in generators]
    )  # (b, n)
    return draw(kept, uniforms)
