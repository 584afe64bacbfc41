"""FID and Inception Score of a folder of samples against a folder of reference images.

    pip install torch-fidelity
    python -m nextscale.eval.fid --samples fid/var-d16 --reference imagenet-256

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to Inception-v3 pool features
of the two folders; the Inception Score (Salimans et al. 2016) is exp E[KL(p(y|x) || p(y))] over the
samples' class probabilities, averaged over `splits` chunks. The default feature extractor is
torch-fidelity's `inception-v3-compat` (the TF-FID Inception weights, fetched on first use); any
callable from uint8 images (b, 3, H, W) to (features (b, d), logits (b, classes)) can replace it, which
is how the tests run offline with a tiny one. The paper numbers of VAR use OpenAI's ADM suite and its
reference batch: compare numbers only between runs of the same tool and reference set.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from nextscale.data.decode import IMAGE_SUFFIXES
from nextscale.decoding import decode_rgb
from nextscale.devices import resolve_device
from nextscale.errors import fail

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""uint8 images (b, 3, H, W) -> (pool features (b, d), class logits (b, classes))."""


def inception_extractor(device: str | torch.device = "cpu") -> Extractor:
    """torch-fidelity's Inception-v3 (`inception-v3-compat`): 2048-d pool features and unbiased logits."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise ImportError("the default FID feature extractor needs torch-fidelity: pip install torch-fidelity") \
            from error
    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"]).to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = model(images.to(device))
        return features, logits

    return extract


def image_files(folder: Path) -> list[Path]:
    """Every jpg/png/webp under `folder`, recursively, sorted (hidden files skipped)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {folder}")
    return files


def load_images(paths: list[Path]) -> torch.Tensor:
    """uint8 (b, 3, H, W); every image of a batch must have the same size (resize reference sets once first)."""
    arrays = [np.asarray(decode_rgb(path.read_bytes())) for path in paths]  # every mode, 16-bit included
    sizes = {array.shape for array in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes {sorted(sizes)} near {paths[0]}: resize the folder to one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def folder_activations(folder: Path, extractor: Extractor, batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, d) and logits (n, classes) of every image under `folder`, in float64."""
    files = image_files(folder)
    features, logits = [], []
    for start in range(0, len(files), batch_size):
        batch_features, batch_logits = extractor(load_images(files[start : start + batch_size]))
        features.append(batch_features.double().cpu())
        logits.append(batch_logits.double().cpu())
    return torch.cat(features), torch.cat(logits)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to features (n, d), in float64.

    tr (S_a S_b)^(1/2) is the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is
    symmetric positive semi-definite, so two symmetric eigendecompositions replace a general sqrtm.
    """
    features_a, features_b = features_a.double(), features_b.double()
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    covariance_a, covariance_b = torch.cov(features_a.T), torch.cov(features_b.T)
    values, vectors = torch.linalg.eigh(covariance_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ covariance_b @ root_a).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + covariance_a.trace() + covariance_b.trace() - 2 * cross
    return float(distance)


def frechet_distance_noise(features: torch.Tensor, real_features: torch.Tensor, per_prompt: int,
                           rounds: int = 20, seed: int = 0) -> float:
    """How far the FD moves with the sample alone: the standard deviation of the FD over `rounds`
    bootstrap resamples of the generated features (n, D), grouped by prompt, each prompt's own
    `per_prompt` images drawn with replacement, against the same real features (n, D).

    Two runs scored against the same real renders whose FDs differ by less than about twice this are
    not told apart by the sample. 0.0 when per_prompt < 2.
    """
    if per_prompt < 2:
        return 0.0
    generator = torch.Generator().manual_seed(seed)
    prompts = features.shape[0] // per_prompt
    offsets = torch.arange(prompts).repeat_interleave(per_prompt) * per_prompt  # (n,) first item of each prompt
    values = [frechet_distance(features[offsets + torch.randint(0, per_prompt, offsets.shape, generator=generator)],
                               real_features) for _ in range(rounds)]
    return statistics.stdev(values)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and std over `splits` chunks of exp(E_x KL(p(y|x) || p(y))); logits (n, classes)."""
    probabilities = logits.double().softmax(dim=-1)
    scores = []
    for chunk in probabilities.chunk(splits):
        marginal = chunk.mean(0, keepdim=True)
        divergence = (chunk * (chunk.clamp(min=1e-30).log() - marginal.clamp(min=1e-30).log())).sum(-1).mean()
        scores.append(math.exp(float(divergence)))
    mean = sum(scores) / len(scores)
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))


def evaluate_folders(samples: Path, reference: Path, extractor: Extractor, batch_size: int = 50,
                     splits: int = 10) -> dict[str, float]:
    """FID of `samples` against `reference` and the Inception Score of `samples`."""
    sample_features, sample_logits = folder_activations(samples, extractor, batch_size)
    reference_features, _ = folder_activations(reference, extractor, batch_size)
    score, spread = inception_score(sample_logits, splits)
    return {"fid": frechet_distance(sample_features, reference_features), "inception_score": score,
            "inception_score_std": spread, "samples": len(sample_features), "reference": len(reference_features)}


@dataclass(frozen=True)
class FidArgs:
    """FID and Inception Score of generated images against reference images (torch-fidelity's Inception-v3)."""

    samples: Path
    """Folder of generated images (searched recursively), e.g. written by sample.py --no-grid."""
    reference: Path
    """Folder of real images at the same size (e.g. ImageNet validation images centre-cropped to 256)."""
    batch_size: int = 50
    """Images per extractor call."""
    splits: int = 10
    """Chunks over which the Inception Score is averaged (10, as usual)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the Inception network runs; auto = cuda when available."""
    out: Path | None = None
    """Also write the metrics as JSON here."""


def main(args: FidArgs, extractor: Extractor | None = None) -> dict[str, float]:
    """Compute, print (and optionally save) the metrics; bad folders are one `error: ...` line (exit 2)."""
    try:
        device = resolve_device(args.device)
        metrics = evaluate_folders(args.samples, args.reference, extractor or inception_extractor(device),
                                   args.batch_size, args.splits)
    except (FileNotFoundError, ImportError, ValueError) as error:
        fail(str(error))
    print(f"FID {metrics['fid']:.3f} ({metrics['samples']} samples vs {metrics['reference']} reference images), "
          f"IS {metrics['inception_score']:.2f} ± {metrics['inception_score_std']:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main(tyro.cli(FidArgs))
