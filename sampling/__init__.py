"""Sampling: one scale-by-scale inference loop with a KV cache, guidance, editing and zoom."""

from nextscale.sampling.condition import Condition, build_condition, scale_conditions
from nextscale.sampling.constraints import ScaleConstraints, token_masks
from nextscale.sampling.filtering import filter_logits, sample_codes, top_k_filter, top_p_filter
from nextscale.sampling.guidance import guidance_strengths, guided_logits
from nextscale.sampling.pipeline import Pipeline, load_pipeline, write_pipeline
from nextscale.sampling.sampler import SamplingConfig, SamplingResult, ScaleStep, generate, sample_scales

__all__ = [
    "Condition",
    "Pipeline",
    "ScaleConstraints",
    "ScaleStep",
    "SamplingConfig",
    "SamplingResult",
    "build_condition",
    "filter_logits",
    "generate",
    "guidance_strengths",
    "guided_logits",
    "load_pipeline",
    "sample_codes",
    "sample_scales",
    "scale_conditions",
    "token_masks",
    "top_k_filter",
    "top_p_filter",
    "write_pipeline",
]
