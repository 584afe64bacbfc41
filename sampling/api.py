"""The Python front door: prompts and PIL images in, PIL images out, the pipeline's recommended settings
as defaults.

    from nextscale import load_pipeline
    pipe = load_pipeline()                                    # the bundled demo model
    images = pipe("a man with a beard", num_images=4, seed=0)  # four PIL images

A thin layer over the one scale loop's entry points: `generate` (text or class label to image), `edit`
through `inpaint`, `outpaint` and `variations`, `generate_mixed` (per-scale prompts) and `zoom`. Images
are read with the command line's conversions and seeded as `sample.py` seeds them (`api_inputs`), so
`pipe(prompts, num_images=n, seed=s)` gives the pictures `sample.py --prompt ... --num-images n --seed s`
writes with the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from nextscale.devices import resolve_device
from nextscale.images import to_pil
from nextscale.sampling import editing
from nextscale.sampling import pipeline as pipelines
from nextscale.sampling.api_inputs import (
    Generation,
    Prompt,
    Zoom,
    chunks,
    finite,
    generation,
    image_seeds,
    jobs_of,
    known_pixels,
    prompt_list,
    rows,
    source_tensors,
    whole_number,
)
from nextscale.sampling.editing import EditOptions, EditResult
from nextscale.sampling.mixing import generate_mixed, switch_prompts
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.precision import DTYPES
from nextscale.sampling.sampler import SamplingConfig, generate
from nextscale.sampling.zoom import ZoomOptions
from nextscale.sampling.zoom import zoom as zoom_stack
from nextscale.sampling.zoom_video import zoom_frames

FALLBACK = SamplingConfig()
"""The settings of a pipeline that recommends none (VAR's demo: cfg 4, top-k 900, top-p 0.95)."""

__all__ = ["Generation", "ImagePipeline", "Zoom", "load_pipeline"]


class ImagePipeline:
    """A loaded pipeline that takes prompts and PIL images and returns PIL images.

    Every method samples with the pipeline's recommended settings unless its keyword arguments say
    otherwise: `cfg_scale` (0 = no guidance), `top_k` (0 = every code), `top_p` (1 = every code),
    `temperature`, `guidance_off_last`, `guidance_schedule` ("linear" or "constant"); see `sampling_config`.
    Returns a list of PIL images, or a `Generation` (images, codes, seeds, progression) when asked.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        """The models underneath (`nextscale.sampling.Pipeline`), for the tensor-level functions."""

    def __repr__(self) -> str:
        source = self.pipeline.directory or "in memory"
        kind = f"{self.num_classes} classes" if self.num_classes else "text"
        return (f"ImagePipeline({source}: {self.image_size} px, scales {list(self.scale_sizes)}, {kind}, "
                f"{self.device})")

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def image_size(self) -> int:
        """Side of the pictures in pixels; inputs are centre-cropped and resized to it."""
        return self.pipeline.tokenizer.config.image_size

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        """Side of each scale's token map, coarse to fine."""
        return tuple(self.pipeline.transformer.config.scale_sizes)

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional pipeline (pass labels instead of prompts); 0 for a text pipeline."""
        return int(self.pipeline.transformer.config.num_classes or 0)

    @property
    def recommended(self) -> dict | None:
        """The sampling settings its evaluation recorded (`cfg_scale`, `top_k`, `top_p`, `source`), or None."""
        return self.pipeline.recommended

    def to(self, device: str | torch.device) -> ImagePipeline:
        """Move every model to `device` ("cpu", "cuda", "auto"); returns the pipeline."""
        target = device if isinstance(device, torch.device) else resolve_device(device)
        self.pipeline.tokenizer.to(target)
        self.pipeline.transformer.to(target)
        if self.pipeline.text_encoder is not None:
            self.pipeline.text_encoder.to(target)
        return self

    def sampling_config(self, cfg_scale: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        temperature: float = 1.0, guidance_off_last: int = 0,
                        guidance_schedule: str = "linear") -> SamplingConfig:
        """The `SamplingConfig` of a call: `cfg_scale`, `top_k` and `top_p` left at None take the pipeline's
        recommended settings (pipeline.json "sampling", as `sample.py` does), else VAR's demo settings."""
        chosen = {"cfg_scale": FALLBACK.cfg_scale, "top_k": FALLBACK.top_k, "top_p": FALLBACK.top_p}
        chosen |= {key: value for key, value in (self.recommended or {}).items() if key in chosen}
        if top_k is not None:
            top_k = whole_number(top_k, "top_k", 0)
        return SamplingConfig(
            cfg_scale=chosen["cfg_scale"] if cfg_scale is None else finite(cfg_scale, "cfg_scale"),
            guidance_schedule=guidance_schedule,  # type: ignore[arg-type]
            guidance_off_last=whole_number(guidance_off_last, "guidance_off_last", 0),
            top_k=chosen["top_k"] if top_k is None else top_k,
            top_p=chosen["top_p"] if top_p is None else finite(top_p, "top_p"),
            temperature=finite(temperature, "temperature"),  # type: ignore[arg-type]
        )

    def _jobs(self, prompt: object, num_images: int, seed: int | Sequence[int], class_label: object = None
              ) -> tuple[list[Prompt], list[Prompt], list[int]]:
        """(prompts, jobs: every prompt num_images times, one seed per job)."""
        prompts = prompt_list(prompt, class_label, self.num_classes)
        jobs = jobs_of(prompts, whole_number(num_images, "num_images", 1))
        return prompts, jobs, image_seeds(seed, len(jobs))

    def __call__(
        self,
        prompt: str | int | Sequence[str] | Sequence[int] | None = None,
        *,
        class_label: int | Sequence[int] | None = None,
        num_images: int = 1,
        seed: int | Sequence[int] = 0,
        cfg_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        guidance_off_last: int = 0,
        guidance_schedule: str = "linear",
        return_codes: bool = False,
        return_progression: bool = False,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[Image.Image] | Generation:
        """`num_images` pictures per prompt (or class label: `pipe(207)`, `pipe(class_label=[207, 980])`).

        Image i (the prompts in order, each repeated `num_images` times) draws from `seed + i`, or from
        `seed[i]` when `seed` is a list. `return_codes` / `return_progression`: a `Generation` with the
        per-scale codes (and each image's picture after every scale) instead of the list of pictures.
        """
        _, jobs, seeds = self._jobs(prompt, num_images, seed, class_label)
        config = self.sampling_config(cfg_scale, top_k, top_p, temperature, guidance_off_last, guidance_schedule)
        images, codes, frames = [], [], []
        for part in chunks(len(jobs), whole_number(batch_size, "batch_size", 1)):
            result = generate(self.pipeline, jobs[part], seeds[part], config, progress=progress,
                              return_progression=return_progression)
            images.append(result.images)
            codes.append(result.codes)
            frames.append(result.progression or [])
        if not (return_codes or return_progression):
            return to_pil(torch.cat(images))
        return generation(images, codes, jobs, seeds, frames if return_progression else None)

    def _edit(self, run, jobs: list, seeds: list[int], batch_size: int, return_codes: bool
              ) -> list[Image.Image] | Generation:
        """Run `run(part) -> EditResult` over the batches of the jobs."""
        results: list[EditResult] = [run(part) for part in chunks(len(jobs), whole_number(batch_size, "batch_size", 1))]
        images = [result.images for result in results]
        if not return_codes:
            return to_pil(torch.cat(images))
        return generation(images, [result.codes for result in results], jobs, seeds)

    def inpaint(self, image: object, mask: object, prompt: str | Sequence[str], *, num_images: int = 1,
                seed: int | Sequence[int] = 0, blend: bool = True, return_codes: bool = False, batch_size: int = 8,
                **sampling: object) -> list[Image.Image] | Generation:
        """Regenerate the white part of `mask` (the image's size; black = keep) following the prompt.

        `image`: a PIL image or file, or a list with one per prompt; `mask`: one, or one per image. Both
        are centre-cropped and resized to the model's side as `sample.py --image --mask` does; `blend`
        puts the kept pixels back after decoding. `sampling`: the keyword arguments of `sampling_config`.
        """
        prompts, jobs, seeds = self._jobs(prompt, num_images, seed)
        sources, pictures = source_tensors(image, len(prompts), num_images, self.image_size)
        known = known_pixels(mask, pictures, num_images, self.image_size)
        config, options = self.sampling_config(**sampling), EditOptions(blend=blend)  # type: ignore[arg-type]
        return self._edit(lambda part: editing.inpaint(self.pipeline, rows(sources, part), rows(known, part),
                                                       jobs[part], seeds[part], config, options),
                          jobs, seeds, batch_size, return_codes)

    def outpaint(self, image: object, sides: Sequence[int], prompt: str | Sequence[str], *, num_images: int = 1,
                 seed: int | Sequence[int] = 0, blend: bool = True, return_codes: bool = False, batch_size: int = 8,
                 **sampling: object) -> list[Image.Image] | Generation:
        """Shrink the image into what `sides` = (left, top, right, bottom) pixels of the model's canvas leave,
        and generate the border from the prompt (`sample.py --image --outpaint L T R B`)."""
        prompts, jobs, seeds = self._jobs(prompt, num_images, seed)
        sources, _ = source_tensors(image, len(prompts), num_images, self.image_size)
        config, options = self.sampling_config(**sampling), EditOptions(blend=blend)  # type: ignore[arg-type]
        return self._edit(lambda part: editing.outpaint(self.pipeline, rows(sources, part), sides, jobs[part],
                                                        seeds[part], config, options),
                          jobs, seeds, batch_size, return_codes)

    def variations(self, image: object, keep_scales: int, prompt: str | Sequence[str], *, num_images: int = 1,
                   seed: int | Sequence[int] = 0, return_codes: bool = False, batch_size: int = 8,
                   **sampling: object) -> list[Image.Image] | Generation:
        """Keep the image's first `keep_scales` scales (layout and colours) and sample the rest from the
        prompt (`sample.py --image --keep-scales k`)."""
        prompts, jobs, seeds = self._jobs(prompt, num_images, seed)
        keep = whole_number(keep_scales, "keep_scales", 1)
        sources, _ = source_tensors(image, len(prompts), num_images, self.image_size)
        config = self.sampling_config(**sampling)  # type: ignore[arg-type]
        return self._edit(lambda part: editing.variations(self.pipeline, rows(sources, part), keep, jobs[part],
                                                          seeds[part], config),
                          jobs, seeds, batch_size, return_codes)

    def mix(self, prompt: str | Sequence[str] | None = None, detail_prompt: str | Sequence[str] | None = None, *,
            switch_scale: int | None = None, scale_prompts: Sequence[str] | None = None, num_images: int = 1,
            seed: int | Sequence[int] = 0, return_codes: bool = False, batch_size: int = 8,
            **sampling: object) -> list[Image.Image] | Generation:
        """Per-scale prompts: the layout from `prompt`, the details from `detail_prompt` from `switch_scale`
        on (default: half the scales), as `sample.py --prompt A --detail-prompt B --switch-scale k`; lists
        of both pair up image by image. Or `scale_prompts`: one prompt per scale, coarse to fine."""
        per_image = self._scale_prompts(prompt, detail_prompt, switch_scale, scale_prompts)
        count = whole_number(num_images, "num_images", 1)
        jobs = jobs_of(per_image, count)
        seeds = image_seeds(seed, len(jobs))
        config = self.sampling_config(**sampling)  # type: ignore[arg-type]
        results = [generate_mixed(self.pipeline, jobs[part], seeds[part], config)
                   for part in chunks(len(jobs), whole_number(batch_size, "batch_size", 1))]
        images = [result.images for result in results]
        if not return_codes:
            return to_pil(torch.cat(images))
        return generation(images, [result.codes for result in results], jobs, seeds)

    def _scale_prompts(self, prompt: object, detail_prompt: object, switch_scale: int | None,
                       scale_prompts: Sequence[str] | None) -> list[list[Prompt]]:
        """One list of per-scale prompts per image of `mix`."""
        num_scales = len(self.scale_sizes)
        if scale_prompts is not None:
            if prompt is not None or detail_prompt is not None:
                raise ValueError("pass scale_prompts, or prompt with detail_prompt, not both")
            given = prompt_list(scale_prompts, None, self.num_classes)
            if len(given) != num_scales:
                raise ValueError(f"got {len(given)} scale_prompts but this model has {num_scales} scales: pass one "
                                 "per scale")
            return [given]
        if detail_prompt is None:
            raise ValueError("mix needs detail_prompt (the prompt of the finer scales) or scale_prompts")
        coarse = prompt_list(prompt, None, self.num_classes)
        fine = prompt_list(detail_prompt, None, self.num_classes)
        if len(fine) != len(coarse):
            raise ValueError(f"got {len(coarse)} prompts and {len(fine)} detail prompts: pass one of each per image")
        switch = num_scales // 2 if switch_scale is None else whole_number(switch_scale, "switch_scale", 1)
        return [switch_prompts(a, b, switch, num_scales) for a, b in zip(coarse, fine)]  # type: ignore[arg-type]

    def zoom(self, prompts: Sequence[str], *, seed: int = 0, factor: int = 2, zoom_out: bool = False,
             keep_scales: int | None = None, blend: bool = True, frames_per_level: int = 12, frame_size: int = 256,
             progress: bool = False, **sampling: object) -> Zoom:
        """A zoom stack, one level per prompt (P0 the widest; with `zoom_out`, P0 the deepest), each level the
        centre 1/`factor` (2 or 4) of the one before; level i draws from `seed + i`, as `sample.py --zoom`.
        Returns its levels and the frames of the continuous zoom (`frame_size` pixels, `frames_per_level`)."""
        if isinstance(prompts, str) or len(prompt_list(prompts, None, self.num_classes)) < 2:
            raise ValueError("a zoom needs a list of at least two prompts, one per level (the widest first)")
        seed = image_seeds(seed, 1)[0]
        options = ZoomOptions(factor=factor, zoom_out=zoom_out, keep_scales=keep_scales, blend=blend)
        config = self.sampling_config(**sampling)  # type: ignore[arg-type]
        result = zoom_stack(self.pipeline, list(prompts), seed, config, options, progress=progress)
        frames = zoom_frames(result.levels, result.factor, whole_number(frames_per_level, "frames_per_level", 1),
                             whole_number(frame_size, "frame_size", 2))
        pictures = [to_pil(frame)[0] for frame in (frames[::-1] if zoom_out else frames)]
        return Zoom([to_pil(level)[0] for level in result.levels], pictures, result.prompts, result.factor)


def load_pipeline(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                  dtype: str | torch.dtype = "float32", decoder_dtype: str | torch.dtype | None = None,
                  adapter: str | os.PathLike | None = None, adapter_scale: float = 1.0) -> ImagePipeline:
    """Load a pipeline directory or hub id (None: the bundled demo model) as an `ImagePipeline`.

    `device`: "cpu", "cuda", "auto" (CUDA when available) or a torch.device; `dtype`: "float32",
    "bfloat16", "float16", "int8" (the transformer's linear layers in int8, a CPU path) or a torch.dtype;
    `decoder_dtype`: None keeps the decoder in `dtype`, "auto" runs it in bf16 on a CPU that computes bf16
    natively (as `sample.py` does); `adapter`: a LoRA adapter directory put on the transformer at
    `adapter_scale`. (`nextscale.sampling.load_pipeline` gives the bare `Pipeline` the tensor-level
    functions take; `ImagePipeline(pipeline)` wraps one.)
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)} or a torch.dtype, got {dtype!r}")
        dtype = DTYPES[dtype]
    target = device if isinstance(device, torch.device) else resolve_device(device)
    return ImagePipeline(pipelines.load_pipeline(name_or_path, target, dtype, adapter=adapter,
                                                 adapter_scale=adapter_scale, decoder_dtype=decoder_dtype))
