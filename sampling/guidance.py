"""Classifier-free guidance for next-scale prediction: per-scale strength and guided logits.

Guided logits follow VAR (Tian et al. 2024, `autoregressive_infer_cfg`):
`(1 + t_k) * conditional - t_k * unconditional`, so `t_k = 0` is the conditional model alone. VAR ramps
the strength linearly with the scale, `t_k = cfg_scale * k / (K - 1)`: coarse scales (layout) stay
diverse, fine scales follow the prompt. Switti (Voronov et al. 2024) observes that guidance
barely matters at the last, highest-resolution scales and switches it off there; since those scales
hold most tokens, dropping the unconditional rows there saves a large share of the compute.
"""

from __future__ import annotations

from typing import Literal

import torch

GuidanceSchedule = Literal["linear", "constant"]
GUIDANCE_SCHEDULES = ("linear", "constant")


def guidance_strengths(
    num_scales: int, cfg_scale: float, schedule: GuidanceSchedule = "linear", guidance_off_last: int = 0
) -> list[float]:
    """Guidance strength t_k of every scale k = 0 .. K-1.

    linear: t_k = cfg_scale * k / (K - 1) (VAR; a single scale gets cfg_scale); constant: t_k = cfg_scale.
    The last `guidance_off_last` scales get 0 (Switti).
    """
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {schedule!r}")
    if num_scales < 1 or guidance_off_last < 0:
        raise ValueError(f"need num_scales >= 1 and guidance_off_last >= 0, got {num_scales}, {guidance_off_last}")
    if schedule == "constant" or num_scales == 1:
        strengths = [float(cfg_scale)] * num_scales
    else:
        strengths = [cfg_scale * scale / (num_scales - 1) for scale in range(num_scales)]
    first_off = max(num_scales - guidance_off_last, 0)
    return [strength if scale < first_off else 0.0 for scale, strength in enumerate(strengths)]


def unconditional_rows_needed(strengths: list[float]) -> list[bool]:
    """Whether scale k must run the unconditional rows: it is guided, or a later scale is (that scale
    attends to the unconditional rows' cached keys and values of scale k)."""
    needed, later = [], False
    for strength in reversed(strengths):
        later = later or strength != 0.0
        needed.append(later)
    return needed[::-1]


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, strength: float) -> torch.Tensor:
    """VAR's guidance `(1 + t) * conditional - t * unconditional`, in fp32, never NaN.

    A code the conditional model rules out (-inf) stays ruled out; where only the unconditional logit
    is infinite, the conditional logit is kept (the formula would give inf - inf or +inf).
    """
    conditional, unconditional = conditional.float(), unconditional.float()
    if strength == 0.0:
        return conditional
    guided = torch.lerp(unconditional, conditional, 1.0 + strength)  # u + (1 + t)(c - u), one pass
    if bool(torch.isfinite(guided).all()):  # the usual case: finite logits, nothing to repair
        return guided
    return torch.where(torch.isfinite(conditional) & torch.isfinite(unconditional), guided, conditional)
