"""The official VAR VQVAE (`vae_ch160v4096z32.pth`, FoundationVision/VAR) as a `MultiScaleVQVAE`.

`var_vqvae_config` reads the architecture off the state dict's shapes; `convert_var_vqvae` renames every
tensor into our layout, walking the modules in the order both autoencoders build them:

    VAR                                        nextscale
    encoder.conv_in / conv_out / norm_out      encoder.stem / out / out_norm
    encoder.down.{l}.block.{i}                 encoder.body.{j}          (nin_shortcut -> skip)
    encoder.down.{l}.attn.{i}                  encoder.body.{j}          (level_attention; proj_out -> proj)
    encoder.down.{l}.downsample.conv           encoder.body.{j}.conv     (downsample_padding="asymmetric")
    {encoder,decoder}.mid.block_1/attn_1/block_2   {encoder,decoder}.mid.0/1/2
    decoder.up.{L-1-l}.block / attn / upsample.conv   decoder.body.{j}  (VAR indexes levels fine to coarse)
    quant_conv / post_quant_conv               encoder.quant_conv / decoder.post_quant_conv
    quantize.embedding / quant_resi.qresi_ls.{k}   quantizer.embedding / quantizer.phis.{k}.conv

`quantize.ema_vocab_hit_SV` (VAR's training-time code-usage statistic) is dropped; any other key that
does not map makes the conversion fail.
"""

from __future__ import annotations

import torch

from nextscale.state_mapping import ConversionError, ForeignState
from nextscale.tokenizer.config import TokenizerConfig

VAR_SCALE_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
"""VAR's `patch_nums` for 256 px images (680 tokens)."""
VAR_IMAGE_SIZE = 256
VAR_PHI_MIX = 0.5  # VAR's `quant_resi`; a constructor argument, not in the state dict
VAR_NORM_GROUPS = 32  # VAR's `Normalize`


def var_vqvae_config(
    state: ForeignState, image_size: int = VAR_IMAGE_SIZE, scale_sizes: tuple[int, ...] = VAR_SCALE_SIZES
) -> TokenizerConfig:
    """The `TokenizerConfig` of a VAR VQVAE state dict (ch, ch_mult, res blocks, attention, codebook)."""
    base, in_channels = state.shape("encoder.conv_in.weight")[:2]
    levels = state.count("encoder.down.{}.block.0.conv1.weight")
    if levels == 0:
        raise ConversionError(f"{state.source} has no encoder.down.0: not a VAR VQVAE state dict")
    widths = [state.shape(f"encoder.down.{level}.block.0.conv1.weight")[0] for level in range(levels)]
    channel_mult = tuple(width // base for width in widths)
    vocab_size, latent_dim = state.shape("quantize.embedding.weight")
    try:
        return TokenizerConfig(
            image_size=image_size,
            in_channels=in_channels,
            latent_dim=latent_dim,
            vocab_size=vocab_size,
            scale_sizes=scale_sizes,
            channel_mult=channel_mult,
            encoder_channels=base,
            decoder_channels=state.shape("decoder.conv_out.weight")[1] // channel_mult[0],
            encoder_res_blocks=state.count("encoder.down.0.block.{}.conv1.weight"),
            decoder_res_blocks=state.count("decoder.up.0.block.{}.conv1.weight"),
            mid_attention=state.has("encoder.mid.attn_1.qkv.weight"),
            mid_res_blocks=2 if state.has("encoder.mid.block_2.conv1.weight") else 1,
            level_attention=state.has(f"encoder.down.{levels - 1}.attn.0.qkv.weight"),
            quant_convs=state.has("quant_conv.weight"),
            downsample_padding="asymmetric",
            lookup="l2",
            num_phi=state.count("quantize.quant_resi.qresi_ls.{}.weight"),
            phi_mix=VAR_PHI_MIX,
            norm_groups=VAR_NORM_GROUPS,
        )
    except ValueError as error:
        raise ConversionError(f"{state.source}: the VQVAE's shapes give no valid tokenizer config: {error}") from error


def _copy(out: dict[str, torch.Tensor], state: ForeignState, source: str, target: str) -> None:
    for name in ("weight", "bias"):
        out[f"{target}.{name}"] = state.take(f"{source}.{name}")


def _res_block(out: dict[str, torch.Tensor], state: ForeignState, source: str, target: str) -> None:
    for theirs, ours in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
        _copy(out, state, f"{source}.{theirs}", f"{target}.{ours}")
    if state.has(f"{source}.nin_shortcut.weight"):  # VAR has it only where the width changes, as we do
        _copy(out, state, f"{source}.nin_shortcut", f"{target}.skip")


def _attention(out: dict[str, torch.Tensor], state: ForeignState, source: str, target: str) -> None:
    for theirs, ours in (("norm", "norm"), ("qkv", "qkv"), ("proj_out", "proj")):
        _copy(out, state, f"{source}.{theirs}", f"{target}.{ours}")


def _mid(out: dict[str, torch.Tensor], state: ForeignState, config: TokenizerConfig, part: str) -> None:
    index = 0
    _res_block(out, state, f"{part}.mid.block_1", f"{part}.mid.{index}")
    if config.mid_attention:
        index += 1
        _attention(out, state, f"{part}.mid.attn_1", f"{part}.mid.{index}")
    if config.mid_res_blocks == 2:
        index += 1
        _res_block(out, state, f"{part}.mid.block_2", f"{part}.mid.{index}")


def convert_var_vqvae(state: ForeignState, config: TokenizerConfig) -> dict[str, torch.Tensor]:
    """VAR VQVAE tensors -> our `MultiScaleVQVAE` state dict for `config` (from `var_vqvae_config`).

    Raises ConversionError if a key is missing or left unmapped; shapes are checked by the caller
    against the built model (`nextscale.state_mapping.check_state`).
    """
    out: dict[str, torch.Tensor] = {}
    levels = len(config.channel_mult)
    _copy(out, state, "encoder.conv_in", "encoder.stem")
    index = 0
    for level in range(levels):
        lowest = level == levels - 1
        for block in range(config.encoder_res_blocks):
            _res_block(out, state, f"encoder.down.{level}.block.{block}", f"encoder.body.{index}")
            index += 1
            if lowest and config.level_attention:
                _attention(out, state, f"encoder.down.{level}.attn.{block}", f"encoder.body.{index}")
                index += 1
        if not lowest:
            _copy(out, state, f"encoder.down.{level}.downsample.conv", f"encoder.body.{index}.conv")
            index += 1
    _mid(out, state, config, "encoder")
    _copy(out, state, "encoder.norm_out", "encoder.out_norm")
    _copy(out, state, "encoder.conv_out", "encoder.out")
    _copy(out, state, "quant_conv", "encoder.quant_conv")

    _copy(out, state, "post_quant_conv", "decoder.post_quant_conv")
    _copy(out, state, "decoder.conv_in", "decoder.stem")
    _mid(out, state, config, "decoder")
    index = 0
    for level in range(levels):  # ours from the lowest resolution up; VAR's `up` is indexed the other way
        theirs = levels - 1 - level
        for block in range(config.decoder_res_blocks):
            _res_block(out, state, f"decoder.up.{theirs}.block.{block}", f"decoder.body.{index}")
            index += 1
            if level == 0 and config.level_attention:
                _attention(out, state, f"decoder.up.{theirs}.attn.{block}", f"decoder.body.{index}")
                index += 1
        if level < levels - 1:
            index += 1  # nn.Upsample: no parameters
            _copy(out, state, f"decoder.up.{theirs}.upsample.conv", f"decoder.body.{index}")
            index += 1
    _copy(out, state, "decoder.norm_out", "decoder.out_norm")
    _copy(out, state, "decoder.conv_out", "decoder.out")

    out["quantizer.embedding.weight"] = state.take("quantize.embedding.weight")
    for phi in range(config.num_phi):
        _copy(out, state, f"quantize.quant_resi.qresi_ls.{phi}", f"quantizer.phis.{phi}.conv")
    state.ignore("quantize.ema_vocab_hit_SV", "VAR's code-usage statistic for training; not used at inference")
    state.finish()
    return out
