"""How predictable a tokenizer's codes are from the coarser scales, and what flat regions are given.

Two measurements, per scale, for any tokenizer:

- Code entropy given the parent code: the parent of cell (i, j) of scale k (side s_k) is the cell of
  scale k-1 (side s_{k-1}) that contains its centre, (floor((i + 1/2) s_{k-1} / s_k), same for j).
  With hundreds of codes per parent, the plug-in entropy of a few hundred images is far too low (the
  counts memorise), so it is cross-validated: the images are split in two folds (even and odd
  positions); on one fold, p(code | parent) = (n(parent, code) + a q(code)) / (n(parent) + a), with
  q the add-one smoothed code frequencies, and its cross-entropy in nats is measured on the other fold
  (both ways, averaged; `a` the best of a few values). The same with q alone gives the code entropy
  without context. Reported as perplexities exp(H): the number of equally likely codes a count model
  of the parent still leaves; lower is more predictable. Scale 0 has no parent: both are equal.
- Flat against textured cells: a cell's pixels are the image region under its token (the image
  area-pooled to s_k x s_k, as the quantiser pools the latent); a cell is flat when the standard
  deviation of its pixels (images in [-1, 1], per channel, averaged over the three) is below
  `flat_threshold`. Plug-in code perplexity and the number of distinct codes over the flat cells
  against the other cells: where the image has nothing to say, a learnable tokenizer spends few codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

FLAT_THRESHOLD = 0.02


def cell_contrast(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (b, 3, H, W) -> (b, size, size): the std of the pixels under each cell of a size x size grid
    (per channel, averaged over channels; the image area-pooled as the quantiser pools the latent)."""
    x = images.float()
    mean = F.interpolate(x, size=(size, size), mode="area")
    square = F.interpolate(x * x, size=(size, size), mode="area")
    return (square - mean * mean).clamp_min(0).sqrt().mean(dim=1)


def parent_cells(size: int, parent_size: int) -> torch.Tensor:
    """Index (size,) of the coarser row (or column) of side `parent_size` containing each row's centre."""
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) * parent_size / size
    return centres.floor().long().clamp_max(parent_size - 1)


def parent_codes(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """Codes (b, p, p) of the coarser scale -> (b, size, size): each cell's parent code."""
    index = parent_cells(size, coarse.shape[-1]).to(coarse.device)
    return coarse[:, index][:, :, index]


def entropy(counts: torch.Tensor) -> float:
    """Plug-in entropy in nats of a histogram."""
    total = counts.sum()
    if total == 0:
        return 0.0
    probs = counts[counts > 0].double() / total
    return float(-(probs * probs.log()).sum())


SMOOTHING = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)


def smoothed_nll(
    fit: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], backoff: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    """Negative log-likelihoods (len(SMOOTHING), m) of test codes under count models of (context, code).

    fit: (contexts, codes) (n,); test: (contexts, codes) (m,); backoff (m,): the probability of each test
    code under the coarser model. p(code | context) = (n(context, code) + a backoff) / (n(context) + a)
    for every smoothing a of `SMOOTHING`.
    """
    contexts, codes = fit
    test_contexts, test_codes = test
    keys, counts = (contexts * vocab_size + codes).unique(return_counts=True)
    test_keys = test_contexts * vocab_size + test_codes
    pair = torch.zeros(len(test_keys), dtype=torch.float64)
    if len(keys):
        position = torch.searchsorted(keys, test_keys).clamp_max(len(keys) - 1)
        pair = torch.where(keys[position] == test_keys, counts[position], 0).double()
    context = torch.bincount(contexts, minlength=vocab_size).double()[test_contexts]
    alphas = torch.tensor(SMOOTHING, dtype=torch.float64)[:, None]
    return -((pair + alphas * backoff) / (context + alphas)).log()


def cross_entropies(
    fit: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], vocab_size: int
) -> tuple[float, float]:
    """Summed NLLs (nats) of the test (parents, codes) under two count models fitted on `fit`:
    the code frequencies (backing off to uniform) and p(code | parent) (backing off to the former),
    each with the best smoothing of `SMOOTHING`."""
    no_context = (torch.zeros_like(fit[1]), fit[1]), (torch.zeros_like(test[1]), test[1])
    uniform = torch.full((len(test[1]),), 1.0 / vocab_size, dtype=torch.float64)
    marginal = smoothed_nll(*no_context, uniform, vocab_size)  # (len(SMOOTHING), m)
    best = marginal.sum(dim=1).argmin()
    conditional = smoothed_nll(fit, test, (-marginal[best]).exp(), vocab_size)
    return float(marginal[best].sum()), float(conditional.sum(dim=1).min())


class CodeStatistics:
    """Accumulates, over batches, per-scale codes and their parents for `summary()`."""

    def __init__(self, scale_sizes: Sequence[int], vocab_size: int, flat_threshold: float = FLAT_THRESHOLD) -> None:
        self.scale_sizes = tuple(scale_sizes)
        self.vocab_size = vocab_size
        self.flat_threshold = flat_threshold
        num = len(self.scale_sizes)
        self.pairs: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = [[[], []] for _ in range(num)]
        self.flat = torch.zeros(num, vocab_size, dtype=torch.long)
        self.textured = torch.zeros(num, vocab_size, dtype=torch.long)
        self.images = 0

    def update(self, images: torch.Tensor, codes: Sequence[torch.Tensor]) -> None:
        """images (b, 3, H, W) in [-1, 1] and their codes [(b, s_k, s_k)]."""
        fold = (torch.arange(images.shape[0]) + self.images) % 2  # (b,): images alternate between folds
        self.images += images.shape[0]
        for k, (size, code) in enumerate(zip(self.scale_sizes, codes)):
            code = code.cpu()
            parent = parent_codes(codes[k - 1].cpu(), size) if k > 0 else torch.zeros_like(code)
            for f in (0, 1):
                self.pairs[k][f].append((parent[fold == f].flatten(), code[fold == f].flatten()))
            flat = cell_contrast(images, size).cpu() < self.flat_threshold
            self.flat[k] += torch.bincount(code[flat], minlength=self.vocab_size)
            self.textured[k] += torch.bincount(code[~flat], minlength=self.vocab_size)

    def predictability(self, scale: int) -> tuple[float, float]:
        """Cross-validated (entropy, entropy given the parent code) of one scale's codes, in nats."""
        folds = [tuple(torch.cat(column) for column in zip(*pairs)) for pairs in self.pairs[scale]]
        if any(len(fold[1]) == 0 for fold in folds):
            raise ValueError("the code entropies need at least two images (one per fold)")
        marginal = conditional = 0.0
        for fit, test in ((folds[0], folds[1]), (folds[1], folds[0])):
            nll, nll_given_parent = cross_entropies(fit, test, self.vocab_size)
            marginal, conditional = marginal + nll, conditional + nll_given_parent
        cells = sum(len(fold[1]) for fold in folds)
        return marginal / cells, conditional / cells

    def summary(self) -> list[dict[str, float]]:
        """Per scale: cross-validated perplexity with and without the parent code; flat and textured cells."""
        rows = []
        for k, size in enumerate(self.scale_sizes):
            flat, textured = self.flat[k], self.textured[k]
            cells = int(flat.sum() + textured.sum())
            marginal, conditional = self.predictability(k)
            rows.append({
                "scale_size": size,
                "entropy": marginal,
                "conditional_entropy": conditional,
                "flat_fraction": float(flat.sum()) / max(cells, 1),
                "flat_perplexity": math.exp(entropy(flat)),
                "flat_distinct": int((flat > 0).sum()),
                "textured_perplexity": math.exp(entropy(textured)),
                "textured_distinct": int((textured > 0).sum()),
            })
        return rows


def format_code_statistics(rows: Sequence[dict]) -> str:
    """The table of `CodeStatistics.summary()`."""
    lines = ["scale  side  exp(H)  exp(H|parent)  flat%  flat ppl (distinct)  textured ppl (distinct)"]
    for k, row in enumerate(rows):
        lines.append(
            f"{k:>5}  {row['scale_size']:>4}  {math.exp(row['entropy']):>6.1f}  "
            f"{math.exp(row['conditional_entropy']):>13.1f}  {100 * row['flat_fraction']:>5.1f}  "
            f"{row['flat_perplexity']:>8.1f} ({row['flat_distinct']:>5})  "
            f"{row['textured_perplexity']:>12.1f} ({row['textured_distinct']:>5})"
        )
    return "\n".join(lines)
