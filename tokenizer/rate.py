"""Rate-aware code choice: spend codes where the image has something to say (entropy-constrained VQ).

The plain lookup picks the code nearest the residual, however little that code adds. With a code rate
(`TokenizerConfig.code_rate`, lambda) the quantiser picks, per cell of scale k,

    argmin_c  distortion(r, e_c) + lambda * w * (-log p_k(c))

where r is the cell's residual, e_c the code vector, p_k the code probabilities of scale k (a buffer of
the quantiser: calibrated on training images with `calibrate_code_rate`, or tracked during training),
and -log p_k(c) the code's length in nats (Chou, Lookabaugh and Gray, 1989: entropy-constrained vector
quantisation). Where two codes reduce the error about equally, the more common one wins, so the codes
the transformer has to predict carry less entropy for little error. The distortion follows the lookup
rule: |r - e_c|^2 for l2, and 2 |r|^2 (1 - cos(r, e_c)) for cosine (the error between the residual and
the code's direction scaled to the residual's norm), so lambda = 0 picks exactly the plain lookup's code.

The weight w is 1 + flat_boost * c^2 / (sigma^2 + c^2), from the standard deviation sigma of the cell's
pixels (`cell_contrast`) and the contrast c (`code_rate_contrast`): cells where the image is flat pay up
to 1 + flat_boost times the rate, textured cells about the plain rate, so flat regions get the commonest
codes. The quantiser needs the images for that (`MultiScaleQuantizer.forward(latent, images)`).

    python -m nextscale.train.code_rate --tokenizer runs/tokenizer/model --out runs/tokenizer_rate \\
        --code-rate 0.004 --flat-boost 4
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from nextscale.tokenizer.model import MultiScaleVQVAE


def cell_contrast(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (b, 3, H, W) -> (b, size, size): the std of the pixels under each cell of a size x size grid
    (per channel, averaged over channels; the image area-pooled as the quantiser pools the latent)."""
    x = images.float()
    mean = F.interpolate(x, size=(size, size), mode="area")
    square = F.interpolate(x * x, size=(size, size), mode="area")
    return (square - mean * mean).clamp_min(0).sqrt().mean(dim=1)


def rate_weights(images: torch.Tensor, size: int, flat_boost: float, contrast: float) -> torch.Tensor:
    """Per-cell multiplier of the code rate (b, size, size): 1 + flat_boost * c^2 / (sigma^2 + c^2)."""
    sigma = cell_contrast(images, size)
    return 1 + flat_boost * contrast**2 / (sigma.pow(2) + contrast**2)


def lookup_distortion(vectors: torch.Tensor, weight: torch.Tensor, rule: str) -> torch.Tensor:
    """Squared error (n, V) of representing each vector (n, C) by each code (V, C), under the lookup rule."""
    if rule == "cosine":
        cosine = F.normalize(vectors, dim=-1) @ F.normalize(weight, dim=-1).t()
        return 2 * vectors.pow(2).sum(-1, keepdim=True) * (1 - cosine)
    return vectors.pow(2).sum(-1, keepdim=True) - 2 * vectors @ weight.t() + weight.pow(2).sum(-1)


def rate_aware_codes(vectors: torch.Tensor, weight: torch.Tensor, rule: str, log_probability: torch.Tensor,
                     rate: torch.Tensor | float) -> torch.Tensor:
    """Codes (n,) minimising distortion + rate * (-log p): vectors (n, C), codebook (V, C), log p (V,),
    rate a scalar or (n,) per vector."""
    if not torch.is_tensor(rate):
        rate = torch.tensor(float(rate), device=vectors.device)
    cost = lookup_distortion(vectors, weight, rule) - rate.reshape(-1, 1).float() * log_probability.float()
    return cost.argmin(dim=-1)


def log_code_frequencies(codes: Iterable[torch.Tensor], vocab_size: int, prior: float = 0.5) -> torch.Tensor:
    """Per-scale code histograms -> smoothed log probabilities (num_scales, V): log((n_c + prior) / (n + prior V))."""
    rows = []
    for code in codes:
        counts = torch.bincount(code.flatten().cpu(), minlength=vocab_size).double()
        rows.append(((counts + prior) / (counts.sum() + prior * vocab_size)).log())
    return torch.stack(rows).float()


def code_entropy(log_probability: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of log probabilities (num_scales, V) -> (num_scales,)."""
    return -(log_probability.exp() * log_probability).sum(-1)


@torch.no_grad()
def calibrate_code_rate(model: MultiScaleVQVAE, batches: Iterable[torch.Tensor], iterations: int = 4,
                        progress: bool = False) -> torch.Tensor:
    """Fit the code probabilities of a rate-aware tokenizer to images (its config's `code_rate` > 0).

    The probabilities and the choice depend on each other, so this alternates (the Lloyd-style loop of
    entropy-constrained VQ): encode every batch with the current probabilities, then set them to the
    smoothed per-scale code frequencies; the first pass uses the plain lookup's codes. Returns the log
    probabilities (num_scales, V), also written to the quantiser.
    """
    quantizer = model.quantizer
    if quantizer.code_log_probability is None:
        raise ValueError("this tokenizer has no code rate: set code_rate > 0 in its config first")
    device = next(model.parameters()).device
    batches = [batch.to(device) for batch in batches]
    latents = [model.encoder(batch) for batch in batches]
    quantizer.code_log_probability.fill_(-math.log(model.config.vocab_size))  # uniform: the plain lookup's codes
    for step in range(iterations + 1):
        codes = [quantizer(latent, batch).codes for latent, batch in zip(latents, batches)]
        per_scale = [torch.cat([c[k] for c in codes]) for k in range(len(quantizer.scale_sizes))]
        quantizer.code_log_probability.copy_(log_code_frequencies(per_scale, model.config.vocab_size))
        if progress:
            print(f"calibration pass {step}/{iterations}: code entropy per scale (nats) "
                  + " ".join(f"{float(h):.2f}" for h in code_entropy(quantizer.code_log_probability)), flush=True)
    return quantizer.code_log_probability.clone()
