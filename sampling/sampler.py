"""THE inference loop: text -> token maps scale by scale (1x1, 2x2, ...) -> images.

VAR (Tian et al. 2024, Sec. 3 and its `autoregressive_infer_cfg`): for each scale k, the transformer
predicts all s_k x s_k codes at once from the text and the coarser scales; the codes are embedded and
added to the accumulated latent, which, pooled to the next scale's side, is the next scale's input.

    accumulated = 0
    for k in scales:
        logits  = transformer(next-scale input of accumulated)        # only scale k's new tokens
        logits  = (1 + t_k) * logits[cond] - t_k * logits[uncond]      # classifier-free guidance
        codes_k = sample(filter(logits), one generator per image)
        accumulated += tokenizer.embed_scale(k, codes_k)
    images = decode(accumulated)

The loop (`sample_scales`) is open at three places, so that editing, variations, per-scale prompts, zoom
and live previews are all built on it: known codes with a token mask per scale (`ScaleConstraints`:
where the mask is set, the known code replaces the sampled one before `embed_scale`), a condition per
scale (`Condition`, built once from the prompts), and an `on_scale` callback after every scale.
`generate` = `build_condition` + `sample_scales` + decode.

Conditional and unconditional ("" prompt) rows run as ONE batch of 2b rows. The production path feeds
only the new scale's tokens and reuses the cached keys/values of earlier scales (`CachedLogits`); the
reference path (`RecomputedLogits`, `generate(..., reference=True)`) recomputes the whole prefix with
the teacher-forced pass at every scale. Both plug into the same loop and consume random numbers
identically, so they must give the same codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nextscale.sampling.condition import Condition, build_condition
from nextscale.sampling.constraints import ScaleConstraints
from nextscale.sampling.filtering import NonFiniteLogits, nan_cause, sample_codes
from nextscale.sampling.guidance import (
    GUIDANCE_SCHEDULES,
    GuidanceSchedule,
    guidance_strengths,
    guided_logits,
    unconditional_rows_needed,
)
from nextscale.sampling.pipeline import Pipeline
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import InferenceState, KVCache, NextScaleTransformer, PerScaleTexts, start_after_switch


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw codes at every scale. Defaults follow VAR's demo (cfg 4, top-k 900, top-p 0.95)."""

    cfg_scale: float = 4.0
    """Guidance strength: logits = (1 + t) * cond - t * uncond with t up to cfg_scale; 0 = no guidance."""
    guidance_schedule: GuidanceSchedule = "linear"
    """linear: t_k = cfg_scale * k / (K - 1), VAR's ramp over scales; constant: t_k = cfg_scale."""
    guidance_off_last: int = 0
    """Switch guidance off for the last N scales and run only the conditional rows there (Switti)."""
    top_k: int | None = 900
    """Keep the k most likely codes; None, 0 or >= vocab_size keeps all; 1 is greedy."""
    top_p: float = 0.95
    """Nucleus: keep the most likely codes up to this probability mass; 1 keeps all; 0 is greedy."""
    temperature: float = 1.0
    """Divide the logits by this before filtering; 0 is greedy (argmax)."""

    def strengths(self, num_scales: int) -> list[float]:
        """Guidance strength of every scale (`guidance_strengths`)."""
        return guidance_strengths(num_scales, self.cfg_scale, self.guidance_schedule, self.guidance_off_last)

    def needs_unconditional(self, num_scales: int) -> bool:
        """Whether a condition must carry the empty-prompt rows (some scale is guided)."""
        return unconditional_rows_needed(self.strengths(num_scales))[0]

    def __post_init__(self) -> None:
        for name in ("cfg_scale", "top_p", "temperature"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0 (0 disables guidance), got {self.cfg_scale}")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {self.guidance_schedule!r}")
        if self.guidance_off_last < 0:
            raise ValueError(f"guidance_off_last must be >= 0, got {self.guidance_off_last}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None keeps every code), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")


@dataclass
class SamplingResult:
    """What `generate` returns."""

    images: torch.Tensor
    """(b, 3, H, W) float32 in [-1, 1]."""
    codes: list[torch.Tensor]
    """Per-scale codes [(b, s_k, s_k) long, ...]."""
    seeds: list[int]
    """The seed of each image."""
    progression: list[torch.Tensor] | None = None
    """With return_progression: one (b, 3, H, W) frame per scale; the last equals `images`."""


class LogitsSource(Protocol):
    """The one place where the two paths differ: logits of scale `scale` for the first `rows` rows."""

    def __call__(self, scale: int, scale_inputs: torch.Tensor | None, rows: int) -> torch.Tensor:
        """scale_inputs (rows, s*s, latent_dim) or None at scale 0 -> logits (rows, s*s, vocab_size)."""
        ...

    def switch_text(self, text: dict[str, torch.Tensor], switched: torch.Tensor) -> None:
        """Use other text states (same rows) from the next scale on; `switched` (rows,) bool marks the rows
        whose prompt differs from the first scale's (a `layout_context` model shows them both prompts)."""
        ...


def keep_rows(state: InferenceState, rows: int) -> InferenceState:
    """The state of the first `rows` rows (drops the unconditional half once guidance is off)."""
    caches = [KVCache(cache.max_length, cache.keys[:rows], cache.values[:rows], cache.length) for cache in state.caches]

    def first(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if tensor is None else tensor[:rows] for tensor in tensors]

    text_mask = None if state.text_mask is None else state.text_mask[:rows]
    return InferenceState(
        state.condition[:rows], text_mask, first(state.text_keys), first(state.text_values), caches, state.next_scale
    )


class CachedLogits:
    """Production path: `start` once, then `forward_scale` with only the new scale's tokens (KV cache)."""

    def __init__(self, transformer: NextScaleTransformer, text: dict[str, torch.Tensor]) -> None:
        self.transformer = transformer
        self.first = text  # the layout text of per-scale prompts
        self.state = transformer.start(**text)

    def switch_text(self, text: dict[str, torch.Tensor], switched: torch.Tensor) -> None:
        """Condition the next scales on other text states (per-scale prompts; `switched` (rows,) bool: the
        rows whose prompt differs from the first scale's); earlier scales' cached keys and values stay as
        they were computed under their own condition."""
        rows = switched.shape[0]
        layout = {name: tensor[:rows] for name, tensor in self.first.items()}
        fresh = start_after_switch(self.transformer, text, layout, switched)
        kept = keep_rows(self.state, fresh.batch_size)  # guidance may end at the same scale
        self.state = InferenceState(fresh.condition, fresh.text_mask, fresh.text_keys, fresh.text_values,
                                    kept.caches, kept.next_scale)

    def __call__(self, scale: int, scale_inputs: torch.Tensor | None, rows: int) -> torch.Tensor:
        if rows < self.state.batch_size:
            self.state = keep_rows(self.state, rows)
        return self.transformer.forward_scale(self.state, scale, scale_inputs)


class RecomputedLogits:
    """Reference path: no cache; at every scale the whole prefix goes through the teacher-forced pass, with
    each scale's own text (per-scale conditions: the pass's `per_scale` texts)."""

    def __init__(self, transformer: NextScaleTransformer, text: dict[str, torch.Tensor]) -> None:
        self.transformer = transformer
        self.texts = [text]  # every text used so far; the last one conditions the next scale
        self.switched: torch.Tensor | None = None  # (rows,) bool: the rows the last text differs in
        self.text_of_scale: list[torch.Tensor] = []  # per scale so far, each row's index in `texts` (rows,)
        self.inputs: list[torch.Tensor] = []  # per scale (rows, s*s, latent_dim)

    def switch_text(self, text: dict[str, torch.Tensor], switched: torch.Tensor) -> None:
        self.texts.append(text)
        self.switched = switched

    def __call__(self, scale: int, scale_inputs: torch.Tensor | None, rows: int) -> torch.Tensor:
        if scale_inputs is not None:
            self.inputs.append(scale_inputs)
        index = torch.zeros(rows, dtype=torch.long)  # rows whose prompt is the first keep text 0
        if self.switched is not None:
            index = torch.where(self.switched[:rows], len(self.texts) - 1, index)
        self.text_of_scale = [per_row[:rows] for per_row in self.text_of_scale] + [index]
        self.inputs = [inputs[:rows] for inputs in self.inputs]
        self.texts = [{name: tensor[:rows] for name, tensor in text.items()} for text in self.texts]
        config = self.transformer.config
        teacher_inputs = (
            torch.cat(self.inputs, dim=1)
            if self.inputs
            else self.transformer.input_embed.weight.new_zeros(rows, 0, config.latent_dim)
        )
        first, *others = self.texts
        per_scale: dict = {}
        if others:
            index = torch.stack(self.text_of_scale, dim=1).to(teacher_inputs.device)  # (rows, scales so far)
            per_scale = {"per_scale": PerScaleTexts(others, index)}
        logits = self.transformer(teacher_inputs, **first, num_scales=scale + 1, **per_scale)  # (rows, L', V)
        return logits[:, self.transformer.offsets[scale] :]


def resolve_seeds(seeds: Sequence[int] | int, count: int) -> list[int]:
    """An int is the base seed (image i gets seed + i); a list gives one seed per image."""
    if isinstance(seeds, int):
        return [seeds + index for index in range(count)]
    seeds = [int(seed) for seed in seeds]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} prompts: pass one per prompt or one base seed")
    return seeds


def encode_text(
    pipeline: Pipeline, prompts: list[str], unconditional: bool, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """text_tokens/text_mask/text_pooled of the prompts, then (if `unconditional`) as many rows of ""."""
    return build_condition(pipeline, prompts, unconditional, dtype).text


def progression_frame(tokenizer: MultiScaleVQVAE, accumulated: torch.Tensor, scale: int) -> torch.Tensor:
    """The reconstruction after `scale`, area-pooled to s_k x s_k pixels and nearest-upsampled to the output
    size: (b, 3, H, W) float32. Frame 0 is the image's mean colour (1x1), then 2x2 sectors, ...; the last
    scale's frame is the image itself."""
    image = tokenizer.decode_latent(accumulated).float()
    if scale == len(tokenizer.config.scale_sizes) - 1:
        return image
    size = tokenizer.config.scale_sizes[scale]
    coarse = F.interpolate(image, size=(size, size), mode="area")
    return F.interpolate(coarse, size=image.shape[-2:], mode="nearest")


@dataclass
class ScaleStep:
    """What the loop hands to `on_scale` after each scale (a UI streams `preview`)."""

    scale: int
    """The scale just finished (0 = the 1x1 map)."""
    codes: list[torch.Tensor]
    """Codes of scales 0..scale [(b, s_k, s_k) long, ...], constraints applied."""
    accumulated: torch.Tensor
    """(b, C, h, w) the accumulated latent after this scale."""
    preview: torch.Tensor | None
    """With previews=True: the progression frame of this scale (b, 3, H, W) float32, else None."""


OnScale = Callable[[ScaleStep], None]


@dataclass
class LoopResult:
    """What `sample_scales` returns."""

    codes: list[torch.Tensor]
    """Per-scale codes [(b, s_k, s_k) long, ...], constraints applied."""
    accumulated: torch.Tensor
    """(b, C, h, w) the accumulated latent after the last scale: `tokenizer.decode_latent` gives the images."""


def switched_rows(first: Condition, condition: Condition, rows: int) -> torch.Tensor:
    """(rows,) bool: the rows whose prompt differs from the first scale's; the "" rows of guidance never do."""
    differs = [mine != theirs for mine, theirs in zip(condition.prompts, first.prompts)]
    return torch.tensor((differs + [False] * rows)[:rows], dtype=torch.bool)


def per_scale(conditions: Condition | Sequence[Condition], num_scales: int) -> list[Condition]:
    """One condition for every scale (a single one is used at every scale); checks the batch sizes agree."""
    if isinstance(conditions, Condition):
        return [conditions] * num_scales
    conditions = list(conditions)
    if len(conditions) != num_scales:
        raise ValueError(f"got {len(conditions)} conditions for {num_scales} scales: pass one or one per scale")
    if len({condition.batch_size for condition in conditions}) != 1:
        raise ValueError("every scale's condition must hold the same number of prompts (one per image)")
    return conditions


@torch.inference_mode()
def sample_scales(
    pipeline: Pipeline,
    conditions: Condition | Sequence[Condition],
    seeds: Sequence[int] | int = 0,
    config: SamplingConfig | None = None,
    *,
    constraints: ScaleConstraints | None = None,
    on_scale: OnScale | None = None,
    previews: bool = False,
    progress: bool = False,
    reference: bool = False,
) -> LoopResult:
    """THE scale loop: codes of every scale, from a condition (or one per scale), one generator per image.

    `constraints`: where a scale's mask is set, the known code replaces the sampled one before it is
    embedded (every image still draws its codes as usual, so a row's random stream does not depend on
    its mask). `on_scale` is called after every scale with a `ScaleStep` (`previews=True` adds the
    decoded progression frame). `reference=True` runs the uncached reference path.
    """
    config = config or SamplingConfig()
    tokenizer, transformer = pipeline.tokenizer, pipeline.transformer
    if transformer.training or tokenizer.training:
        raise ValueError("the tokenizer and transformer are in training mode: call .eval() before sampling")
    scale_sizes = transformer.config.scale_sizes
    scale_conditions = per_scale(conditions, len(scale_sizes))
    batch = scale_conditions[0].batch_size
    if constraints is not None:
        constraints.check(batch, scale_sizes)
    image_seeds = resolve_seeds(seeds, batch)
    generators = [torch.Generator(device=pipeline.device).manual_seed(seed) for seed in image_seeds]
    strengths = config.strengths(len(scale_sizes))
    guided_rows = unconditional_rows_needed(strengths)
    if guided_rows[0] and not all(condition.unconditional for condition in scale_conditions):
        raise ValueError("guidance needs the unconditional rows: build the condition with unconditional=True "
                         "(or sample with cfg_scale 0)")
    dtype = next(transformer.parameters()).dtype
    rows = 2 * batch if guided_rows[0] else batch
    source: LogitsSource = (RecomputedLogits if reference else CachedLogits)(
        transformer, scale_conditions[0].rows(rows)
    )

    codes: list[torch.Tensor] = []
    accumulated: torch.Tensor | None = None  # (b, C, h, w), VAR's f_hat
    for scale in tqdm(range(len(scale_sizes)), desc="scales", disable=not progress, leave=False):
        rows = 2 * batch if guided_rows[scale] else batch
        if scale > 0 and scale_conditions[scale] is not scale_conditions[scale - 1]:
            source.switch_text(scale_conditions[scale].rows(rows), switched_rows(scale_conditions[0],
                                                                                 scale_conditions[scale], rows))
        scale_inputs = None
        if accumulated is not None:
            scale_inputs = tokenizer.quantizer.next_scale_input(accumulated, scale).to(dtype)  # (b, s*s, C)
            scale_inputs = scale_inputs.repeat(rows // batch, 1, 1)  # (rows, s*s, C)
        logits = source(scale, scale_inputs, rows)  # (rows, s*s, V)
        if rows > batch:
            logits = guided_logits(logits[:batch], logits[batch:], strengths[scale])
        size = scale_sizes[scale]
        try:
            code = sample_codes(logits, generators, config.top_k, config.top_p, config.temperature)
        except NonFiniteLogits as error:
            raise NonFiniteLogits(f"{error} at scale {scale + 1}: {nan_cause(dtype)}") from None
        code = code.view(batch, size, size)
        if constraints is not None:
            code = constraints.apply(scale, code, tokenizer.quantizer, accumulated)
        codes.append(code)
        contribution = tokenizer.quantizer.embed_scale(scale, code)  # (b, C, h, w)
        accumulated = contribution if accumulated is None else accumulated + contribution
        if on_scale is not None:
            preview = progression_frame(tokenizer, accumulated, scale) if previews else None
            on_scale(ScaleStep(scale, list(codes), accumulated, preview))
    assert accumulated is not None
    return LoopResult(codes, accumulated)


@torch.inference_mode()
def generate(
    pipeline: Pipeline,
    prompts: Sequence[str] | Sequence[int],
    seeds: Sequence[int] | int = 0,
    config: SamplingConfig | None = None,
    *,
    progress: bool = False,
    return_progression: bool = False,
    reference: bool = False,
) -> SamplingResult:
    """Generate one image per prompt (or per class label, for a class-conditional pipeline); image i draws
    from its own `torch.Generator` seeded `seeds[i]`.

    The same seed gives the same image, whatever else is in the batch. Every call starts from a fresh
    inference state. `reference=True` runs the uncached reference path (for tests and benchmarks).
    Builds the condition (`build_condition`) and runs the one scale loop (`sample_scales`).
    """
    config = config or SamplingConfig()
    prompt_list = [prompts] if isinstance(prompts, (str, int)) else list(prompts)
    unconditional = config.needs_unconditional(pipeline.transformer.config.num_scales)
    condition = build_condition(pipeline, prompt_list, unconditional)
    frames: list[torch.Tensor] = []
    result = sample_scales(
        pipeline, condition, seeds, config, progress=progress, reference=reference, previews=return_progression,
        on_scale=(lambda step: frames.append(step.preview)) if return_progression else None,  # type: ignore[arg-type]
    )
    images = frames[-1] if return_progression else pipeline.tokenizer.decode_latent(result.accumulated).float()
    return SamplingResult(images, result.codes, resolve_seeds(seeds, len(prompt_list)), frames or None)
