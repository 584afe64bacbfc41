"""Convert the official VAR checkpoints into a nextscale sampling pipeline.

    python -m nextscale.sampling.convert_var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    nextscale-sample --checkpoint var-d16 --class-label 207 --cfg 1.5 --top-k 900 --top-p 0.96

Reads the released `.pth` files with `torch.load(weights_only=True)` (plain tensors only, no code runs)
or the same state dicts saved as `.safetensors`; maps every key (`nextscale.tokenizer.var_weights`,
`nextscale.transformer.var_weights`), refuses any key it does not map, checks every shape against our
models built on the meta device (so even VAR-d30 is checked without allocating it twice), refuses
non-finite weights and integer tensors where float weights belong, and writes the pipeline directory
atomically, never deleting what it did not write. It lives in `sampling` because it writes a sampling pipeline, which
needs both the tokenizer and the transformer; the transformer package never loads the autoencoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nextscale.checkpoint import atomic_write_dir, read_safetensors, write_model_dir
from nextscale.errors import run_cli
from nextscale.sampling.pipeline import check_compatible, write_pipeline_spec
from nextscale.state_mapping import ConversionError, ForeignState, check_state
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.var_weights import convert_var_vqvae, var_vqvae_config
from nextscale.transformer import NextScaleTransformer, TransformerConfig
from nextscale.transformer.var_weights import convert_var_transformer, var_transformer_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ConvertArgs:
    """Convert the official VAR VQVAE + transformer (FoundationVision/VAR) into a nextscale pipeline directory."""

    vae: Path
    """The VQVAE state dict: vae_ch160v4096z32.pth (or the same tensors as .safetensors)."""
    var: Path
    """The transformer state dict: var_d16.pth, var_d20.pth, var_d24.pth or var_d30.pth (or .safetensors)."""
    out: Path
    """The pipeline folder to write (tokenizer/, transformer/, pipeline.json): an existing folder keeps what
    the converter does not write there; a file is refused."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the written weights (the official files are float32)."""


@dataclass(frozen=True)
class ConvertedVar:
    """Both parts in our layout: configs and state dicts (tensors as read, unless cast on writing)."""

    tokenizer_config: TokenizerConfig
    tokenizer_state: dict[str, torch.Tensor]
    transformer_config: TransformerConfig
    transformer_state: dict[str, torch.Tensor]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from `.safetensors` or a pickled `.pth`/`.pt`/`.bin` read with weights_only=True."""
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path)
        except (ValueError, KeyError, TypeError) as error:  # a header or data that is not a whole file
            raise ConversionError(f"{path} is not a whole .safetensors file ({error}): it is damaged or "
                                  "truncated; use an intact copy") from None
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise ConversionError(f"{path}: expected a .pth or .safetensors state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers only
    except Exception as error:  # a non-tensor object (refused by weights_only) or a damaged file
        raise ConversionError(f"{path} is not a plain tensor state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat state dict of tensors (name -> tensor)")
    return dict(state)


def _meta_state(model_class: type, config: object) -> dict[str, torch.Tensor]:
    """The state dict of `model_class(config)` built on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return model_class(config).state_dict()


def convert_var(
    vae_state: Mapping[str, torch.Tensor],
    var_state: Mapping[str, torch.Tensor],
    vae_name: str = "the VQVAE state dict",
    var_name: str = "the VAR state dict",
) -> ConvertedVar:
    """Map both state dicts (real or meta tensors) and check them against our models' names and shapes."""
    vae = ForeignState(vae_state, vae_name)
    tokenizer_config = var_vqvae_config(vae)
    tokenizer_state = convert_var_vqvae(vae, tokenizer_config)
    check_state(tokenizer_state, _meta_state(MultiScaleVQVAE, tokenizer_config), f"tokenizer from {vae_name}")
    var = ForeignState(var_state, var_name)
    transformer_config = var_transformer_config(var, tokenizer_config.scale_sizes)
    transformer_state = convert_var_transformer(var, transformer_config)
    target = _meta_state(NextScaleTransformer, transformer_config)
    check_state(transformer_state, target, f"transformer from {var_name}")
    with torch.device("meta"):
        check_compatible(MultiScaleVQVAE(tokenizer_config), NextScaleTransformer(transformer_config), None)
    return ConvertedVar(tokenizer_config, tokenizer_state, transformer_config, transformer_state)


def write_converted(converted: ConvertedVar, out: Path, dtype: torch.dtype | None = None) -> Path:
    """Write the sampling pipeline directory atomically (no text encoder: the model is class-conditional)."""

    def write(tmp: Path) -> None:
        write_model_dir(tmp / "tokenizer", MultiScaleVQVAE.__name__, converted.tokenizer_config,
                        converted.tokenizer_state, dtype)
        write_model_dir(tmp / "transformer", NextScaleTransformer.__name__, converted.transformer_config,
                        converted.transformer_state, dtype)
        write_pipeline_spec(tmp, None, None)

    atomic_write_dir(out, write)
    return out


def main(args: ConvertArgs) -> Path:
    """Read, convert, check and write (ConversionError, or OSError naming --out when it cannot be written)."""
    converted = convert_var(read_state_dict(args.vae), read_state_dict(args.var), str(args.vae), str(args.var))
    try:
        write_converted(converted, args.out, DTYPES[args.dtype])
    except OSError as error:
        raise OSError(f"--out {args.out} cannot be written ({error})") from error
    config = converted.transformer_config
    print(f"wrote {args.out}/: VAR depth {config.depth}, width {config.width}, {config.num_classes} classes, "
          f"{config.vocab_size} codes at scales {config.scale_sizes}")
    return args.out


def cli() -> None:
    """The `nextscale-convert-var` console script: every problem is one `error: ...` line (exit 2)."""
    run_cli(ConvertArgs, main)


if __name__ == "__main__":
    cli()
