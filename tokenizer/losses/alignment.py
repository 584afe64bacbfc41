"""Representation alignment of every scale with a frozen self-supervised vision encoder.

The frozen teacher (DINOv2 by default, any `transformers` vision backbone with patch tokens) gives
patch features, average-pooled into a pyramid at every scale side s_k. A small projection maps the
tokenizer's accumulated latent after scale k to the teacher's width; a cosine loss with a margin
pulls the two together at every scale (in the spirit of REPA, Yu et al. 2024, and VA-VAE, Yao et al.
2025), so coarse scales carry layout and semantics and fine scales carry texture.

Which tokenizer tensors the projections read (`AlignmentConfig.gradient`), and so where the alignment
gradient goes: the accumulated latents after each scale are built from a detached copy of the encoder
latent (the quantiser's straight-through estimator only carries the decoder's gradient), so aligned as
they are ("codebook") the loss moves code vectors and phi convs, never the encoder. "straight_through"
adds the encoder latent's gradient path to each partial sum with its value unchanged (partial +
latent - latent.detach()), so the encoder receives the gradient the partial would, as the decoder's
gradient reaches it through the final sum; "latent" aligns the encoder latent itself, area-pooled to
every scale side (REPA/VA-VAE style), and leaves the codebook to the reconstruction.

The teacher is never saved in our checkpoints; the projections are training-only and live in the
training state, not in the exported tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from nextscale.tokenizer.losses.backbone import FrozenBackbone


@dataclass(frozen=True)
class AlignmentConfig:
    """Which teacher to align with and how strongly."""

    teacher: str = "facebook/dinov2-base"
    """Local directory or hub id of a `transformers` vision backbone; "none" disables alignment."""
    weight: float = 0.5
    """Weight of the alignment loss in the tokenizer's total loss."""
    margin: float = 0.0
    """Cosine similarities above 1 - margin are not penalised."""
    scales: Literal["all", "last"] = "all"
    """Which scales are aligned: every scale equally (the pyramid of the design), or the last only (the whole
    quantised latent, whose gradient reaches the encoder as a whole)."""
    scale_weights: tuple[float, ...] | None = None
    """Per-scale weights (len = num_scales), instead of `scales`; None: as `scales` says."""
    teacher_resolution: int = 224
    """Images are resized to this side before the teacher (a multiple of its patch size)."""
    projection_width: int = 256
    """Hidden width of the projection from the latent to the teacher's width."""
    cache_dir: str | None = None
    """Precompute the teacher's feature pyramids of the training images once into safetensors shards here
    (reused when teacher and scales match) instead of running the teacher every step."""
    project_pooled: bool = True
    """Project each scale's latent after area-pooling it to the scale side (s_k^2 positions) rather than
    pooling the projection of all h x w positions (the behaviour before): fewer projected positions, so
    alignment costs little beside a tokenizer step (docs/experiments/alignment-gradient-and-cost.md)."""
    gradient: Literal["straight_through", "latent", "codebook"] = "straight_through"
    """What is aligned at each scale, hence what the gradient reaches: the accumulated latent with a
    straight-through path to the encoder (encoder, codebook, phi), the encoder latent pooled to the scale
    (encoder only), or the accumulated latent alone (codebook and phi only; the behaviour before)."""

    @property
    def enabled(self) -> bool:
        return self.teacher.lower() != "none"


class FrozenVisionTeacher(FrozenBackbone):
    """A frozen `transformers.AutoModel` vision backbone returning its patch-feature grid."""

    def __init__(self, name_or_path: str | os.PathLike, resolution: int = 224) -> None:
        super().__init__(name_or_path, resolution, option="--alignment.teacher")
        config = self.backbone.config
        self.patch_size = self.patch_size or 14
        self.resolution -= self.resolution % self.patch_size  # whole patches, whatever the config names
        self.width = int(config.hidden_size)
        # CLS and register tokens precede the patch tokens (DINOv2 with registers has 4 of them).
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) in [-1, 1] -> patch features (b, D, g, g)."""
        hidden = self.backbone(pixel_values=self.pixels(images)).last_hidden_state  # (b, prefix + g*g, D)
        grid = self.resolution // self.patch_size
        patches = hidden[:, self.num_prefix_tokens : self.num_prefix_tokens + grid * grid]
        return rearrange(patches, "b (h w) d -> b d h w", h=grid, w=grid)


def feature_pyramid(features: torch.Tensor, scale_sizes: Sequence[int]) -> list[torch.Tensor]:
    """Average-pool a (b, D, g, g) feature grid to every scale side -> [(b, D, s_k, s_k), ...]."""
    return [F.adaptive_avg_pool2d(features, size) for size in scale_sizes]


def alignment_inputs(
    accumulated: Sequence[torch.Tensor], latent: torch.Tensor, scale_sizes: Sequence[int], gradient: str
) -> list[torch.Tensor]:
    """What the projections read at each scale, per `AlignmentConfig.gradient`.

    accumulated: [(b, C, h, w)] after each scale; latent (b, C, h, w): the encoder output (with its
    gradient). Returns one (b, C, h, w) map per scale ("latent": (b, C, s_k, s_k), the area-pooled latent).
    The straight-through maps have exactly the values of `accumulated`.
    """
    if gradient == "codebook":
        return list(accumulated)
    if gradient == "straight_through":
        latent = latent.float()
        path = latent - latent.detach()  # zero valued, identity gradient to the encoder
        return [partial + path for partial in accumulated]
    if gradient == "latent":
        return [F.interpolate(latent.float(), size=(s, s), mode="area") for s in scale_sizes]
    raise ValueError(f"alignment gradient must be straight_through, latent or codebook, got {gradient!r}")


def cosine_margin_loss(prediction: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over positions of relu(1 - margin - cos(prediction, target)); both (b, D, s, s)."""
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=1)
    return F.relu(1 - margin - cosine).mean()


def scale_weights(scales: str, num_scales: int) -> tuple[float, ...]:
    """The per-scale weights of `AlignmentConfig.scales`: "all" -> 1 each, "last" -> 0, ..., 0, 1."""
    if scales == "all":
        return (1.0,) * num_scales
    if scales == "last":
        return (0.0,) * (num_scales - 1) + (1.0,)
    raise ValueError(f"alignment scales must be 'all' or 'last', got {scales!r}")


class AlignmentHead(nn.Module):
    """Per-scale projections latent_dim -> teacher width, and the per-scale alignment loss."""

    def __init__(
        self, config: AlignmentConfig, latent_dim: int, teacher_width: int, scale_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.config = config
        self.scale_sizes = tuple(scale_sizes)
        weights = config.scale_weights or scale_weights(config.scales, len(self.scale_sizes))
        if len(weights) != len(self.scale_sizes):
            raise ValueError(
                f"alignment scale_weights has {len(weights)} entries but there are {len(self.scale_sizes)} scales"
            )
        self.scale_weights = tuple(float(w) for w in weights)
        hidden = config.projection_width
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(latent_dim, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, teacher_width, 1))
            for _ in self.scale_sizes
        )

    def forward(
        self, accumulated: Sequence[torch.Tensor], latent: torch.Tensor, pyramid: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """accumulated: [(b, C, h, w)] after each scale; latent (b, C, h, w): the encoder output;
        pyramid: [(b, D, s_k, s_k)] teacher features.

        Returns the weighted total loss and the unweighted loss of each scale.
        """
        inputs = alignment_inputs(accumulated, latent, self.scale_sizes, self.config.gradient)
        per_scale = []
        for projection, aligned, target, size in zip(self.projections, inputs, pyramid, self.scale_sizes):
            if self.config.project_pooled and aligned.shape[-1] != size:
                aligned = F.interpolate(aligned, size=(size, size), mode="area")  # (b, C, s, s)
            prediction = projection(aligned)
            if prediction.shape[-1] != size:  # pooling is costly at the teacher's width: only where needed
                prediction = F.adaptive_avg_pool2d(prediction, size)  # (b, D, s, s)
            per_scale.append(cosine_margin_loss(prediction, target, self.config.margin))
        total = sum(w * loss for w, loss in zip(self.scale_weights, per_scale)) / sum(self.scale_weights)
        return total, per_scale


CACHE_META = "teacher_cache.json"


def precompute_teacher_features(
    teacher: FrozenVisionTeacher,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    scale_sizes: Sequence[int],
    directory: str | os.PathLike,
    teacher_name: str,
    shard_size: int = 4096,
) -> Path:
    """Run the teacher once over (images (b, 3, H, W), dataset indices (b,)) batches and store every
    image's pyramid, flattened to (sum s_k^2, D) in fp16, in shards `pyramid_00000.safetensors`, ...

    Memory of the loaded cache: images x sum(s_k^2) x D x 2 bytes (130 x 768 x 2 = 200 kB per image for
    DINOv2-base at the demo scales).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    shards, count = 0, 0

    def flush() -> None:
        nonlocal shards, pending
        if pending:
            save_file({"pyramid": torch.cat([p for p, _ in pending]), "index": torch.cat([i for _, i in pending])},
                      str(directory / f"pyramid_{shards:05d}.safetensors"))
            shards, pending = shards + 1, []

    for images, indices in batches:
        if bool((indices < 0).any()):
            raise ValueError("teacher features are cached per dataset index: this source (WebDataset) has none")
        pyramid = feature_pyramid(teacher(images), scale_sizes)  # [(b, D, s, s)]
        flat = torch.cat([rearrange(level, "b d s t -> b (s t) d") for level in pyramid], dim=1)
        pending.append((flat.half().cpu(), indices.cpu()))
        count += len(indices)
        if sum(len(i) for _, i in pending) >= shard_size:
            flush()
    flush()
    meta = {"teacher": teacher_name, "resolution": teacher.resolution, "scale_sizes": list(scale_sizes),
            "images": count, "shards": shards}
    (directory / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks completion
    return directory


class TeacherFeatureCache:
    """Precomputed pyramids in memory, looked up by dataset index."""

    def __init__(self, directory: str | os.PathLike, teacher_name: str, scale_sizes: Sequence[int]) -> None:
        directory = Path(directory)
        meta = json.loads((directory / CACHE_META).read_text())
        if meta["teacher"] != teacher_name or meta["scale_sizes"] != list(scale_sizes):
            raise ValueError(
                f"{directory} caches {meta['teacher']} at scales {meta['scale_sizes']}, not {teacher_name} at "
                f"{list(scale_sizes)}: delete it or point --alignment.cache-dir elsewhere"
            )
        self.scale_sizes = tuple(scale_sizes)
        shards = [load_file(str(directory / f"pyramid_{i:05d}.safetensors")) for i in range(meta["shards"])]
        indices = torch.cat([shard["index"] for shard in shards])
        flat = torch.cat([shard["pyramid"] for shard in shards])  # (n, L, D)
        self.rows = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        self.rows[indices] = torch.arange(len(indices))
        self.flat = flat

    @staticmethod
    def is_complete(directory: str | os.PathLike) -> bool:
        return (Path(directory) / CACHE_META).is_file()

    def lookup(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Dataset indices (b,) -> the pyramid [(b, D, s_k, s_k), ...] in fp32."""
        indices = indices.cpu()
        known = (indices >= 0) & (indices < len(self.rows))
        if not bool(known.all()) or bool((self.rows[indices] < 0).any()):
            raise KeyError("some images are not in the teacher-feature cache: it was built for other data")
        flat = self.flat[self.rows[indices]].float()  # (b, L, D)
        levels = torch.split(flat, [s * s for s in self.scale_sizes], dim=1)
        return [rearrange(level, "b (s t) d -> b d s t", s=s, t=s) for level, s in zip(levels, self.scale_sizes)]
