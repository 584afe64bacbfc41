"""Make a trained tokenizer rate-aware: set its code rate and fit its code probabilities on training images.

    python -m nextscale.train.code_rate --tokenizer runs/tokenizer/model --out runs/tokenizer_rate \\
        --code-rate 0.004 --flat-boost 4

The encoder, codebook and decoder are copied unchanged: only the choice of codes changes (see
`nextscale.tokenizer.rate`), so decoding any code map gives the same image as before. A transformer
has to be trained on the new tokenizer's codes. The probabilities are fitted on the training part of
the data, and the new tokenizer is evaluated on its held-out part as a tokenizer training is (PSNR, code
usage and predictability, flat against textured cells: printed and written to `out/metrics.json`).
To let the encoder and decoder adapt to the new codes too, fine-tune the result with the same rate
(`train_tokenizer.py --init-from out --model.code-rate 0.004 --model.code-rate-flat-boost 4 --steps
300`: the training tracks the probabilities from the calibrated ones).

lambda is in units of the tokenizer's squared latent error, so its effect depends on how much energy
the tokenizer's latent carries: the command prints the mean squared residual per cell that each scale's
lookup sees (`residual_energy`). To carry a setting over to another tokenizer, scale lambda by the ratio
of these energies (the aligned demo preset's tokenizer carries about 4x the 1x demo tokenizer's, so
0.016 there does what 0.004 does on the 1x one; README, "A rate-aware lookup").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from nextscale.data import DataConfig, HeldOutConfig, loader_over
from nextscale.data.split import evaluation_split
from nextscale.eval.tokenizer import format_tokenizer_metrics
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.quantizer import residual_cell_norms
from nextscale.tokenizer.rate import calibrate_code_rate, code_entropy
from nextscale.train.errors import run_cli
from nextscale.train.tokenizer_loop import evaluate_held_out


@dataclass(frozen=True)
class CalibrateArgs:
    """Turn a trained tokenizer into a rate-aware one (`nextscale.tokenizer.rate`)."""

    tokenizer: str
    """Trained tokenizer directory (or hub id)."""
    out: str
    """Directory of the rate-aware tokenizer (weights + config)."""
    code_rate: float = 0.004
    """lambda: squared latent error traded per nat of code length (0.004 and flat boost 4: the setting
    measured on the 1x demo tokenizer in README, "A rate-aware lookup"; its effect scales with the
    tokenizer's latent energy, printed as the residual energy per scale: scale lambda with it)."""
    flat_boost: float = 4.0
    """Extra rate where the image is flat (cells of pixel std well below `contrast` pay 1 + this times)."""
    contrast: float = 0.02
    """Pixel std (images in [-1, 1]) at which a cell pays half the extra rate."""
    images: int = 2048
    """Training images the probabilities are fitted on (the first items of the training part)."""
    iterations: int = 4
    """Passes of the calibration after the plain lookup's."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training images (the tokenizer's own source; the synthetic portraits by default)."""
    eval_data: HeldOutConfig = field(default_factory=HeldOutConfig)
    """Held-out images of the evaluation (by default split off --data as a tokenizer training does)."""
    eval_images: int = 512
    """Held-out images evaluated after the calibration (0 skips the evaluation)."""
    threads: int = 0
    """torch threads (0: torch's default)."""


@torch.no_grad()
def residual_energy(model: MultiScaleVQVAE, images: torch.Tensor) -> torch.Tensor:
    """(K,): the mean squared norm, per cell, of the residual that each scale's lookup sees, under the
    model's own lookup, for images (b, 3, H, W) in [-1, 1]; the units of the code rate's distortion."""
    latent = model.encoder(images).float()
    partials = model.quantizer(latent, images).accumulated  # the sum of the codes up to each scale
    before = [torch.zeros_like(latent), *partials[:-1]]
    return torch.stack([residual_cell_norms(latent - done, size).pow(2).mean()
                        for size, done in zip(model.quantizer.scale_sizes, before)])


def calibrate_main(args: CalibrateArgs) -> Path:
    if args.code_rate <= 0:
        raise ValueError(f"--code-rate must be > 0 (0 is the plain lookup), got {args.code_rate}")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = MultiScaleVQVAE.from_pretrained(args.tokenizer).eval()
    config = replace(source.config, code_rate=args.code_rate, code_rate_flat_boost=args.flat_boost,
                     code_rate_contrast=args.contrast)
    model = MultiScaleVQVAE(config).eval()
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or set(missing) - {"quantizer.code_log_probability"}:
        raise ValueError(f"{args.tokenizer}: unexpected weights {unexpected} / missing {missing}")
    data = replace(args.data, image_size=config.image_size)
    split = evaluation_split(data, args.eval_data.resolve(data), max(args.eval_images, 1))
    batches, seen = [], 0
    for batch in loader_over(split.train, batch_size=128, shuffle=False, drop_last=False):
        batches.append(batch["image"][: args.images - seen])
        seen += batches[-1].shape[0]
        if seen >= args.images:
            break
    energy = residual_energy(source, batches[0])
    print(f"residual energy per scale (mean squared residual per cell, {args.tokenizer}'s lookup): "
          + " ".join(f"{float(e):.3f}" for e in energy) + f"; lambda {args.code_rate:g}")
    log_probability = calibrate_code_rate(model, batches, args.iterations, progress=True)
    out = Path(args.out)
    model.save_pretrained(out)
    entropy = " ".join(f"{float(h):.2f}" for h in code_entropy(log_probability))
    print(f"saved {out}: code rate {args.code_rate:g}, flat boost {args.flat_boost:g}; code entropy per scale "
          f"{entropy} nats (uniform: {math.log(config.vocab_size):.2f})")
    if args.eval_images > 0:
        metrics = evaluate_held_out(model, split, args.eval_images)
        metrics.update(source=args.tokenizer, code_rate=args.code_rate, flat_boost=args.flat_boost,
                       residual_energy=[float(e) for e in energy],
                       contrast=args.contrast, calibration_images=seen, calibration_iterations=args.iterations)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_tokenizer_metrics(metrics))
    return out


def cli(argv: list[str] | None = None) -> None:
    """`python -m nextscale.train.code_rate`: bad options and files are one line, not a traceback."""
    run_cli(CalibrateArgs, calibrate_main, argv)


if __name__ == "__main__":
    cli()
