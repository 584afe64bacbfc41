"""Sampling: one scale-by-scale inference loop with a KV cache, guidance, editing and zoom."""

from sampling.filtering import filter_logits, sample_codes, top_k_filter, top_p_filter
from sampling.guidance import guidance_strengths, guided_logits
from sampling.pipeline import Pipeline, load_pipeline, write_pipeline
from sampling.sampler import SamplingConfig, SamplingResult, generate

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
