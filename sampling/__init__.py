"""Sampling: one scale-by-scale inference loop with a KV cache, guidance, editing and zoom."""

from nextscale.sampling.filtering import filter_logits, sample_codes, top_k_filter, top_p_filter
from nextscale.sampling.guidance import guidance_strengths, guided_logits
from nextscale.sampling.pipeline import Pipeline, load_pipeline, write_pipeline
from nextscale.sampling.sampler import SamplingConfig, SamplingResult, generate

__all__ = [
    "Pipeline",
    "SamplingConfig",
    "SamplingResult",
    "filter_logits",
    "generate",
    "guidance_strengths",
    "guided_logits",
    "load_pipeline",
    "sample_codes",
    "top_k_filter",
    "top_p_filter",
    "write_pipeline",
]
