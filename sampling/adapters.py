"""LoRA adapters of the next-scale transformer (Hu et al. 2021, through the `peft` library): the format,
loading one onto a pipeline, its scale, and merging it into a full pipeline.

    adapter/
      adapter_config.json        the LoRA settings (rank, alpha, the targeted projections) and the base
                                 transformer it fits: its config and a hash of its weights
      adapter_model.safetensors  the LoRA matrices only (peft's key names)

An adapter fits one base transformer: loading it onto another (another architecture, or the same one
with other weights) is refused with one line that names the difference.

    python -m nextscale.sampling.adapters merge --pipeline BASE --adapter DIR --out MERGED [--scale S]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nextscale.errors import fail

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FORMAT = "nextscale-lora/1"
ADAPTER_NAME = "default"

TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "self-attention": ("self_attention.qkv", "self_attention.output"),
    "cross-attention": ("cross_attention.query", "cross_attention.key_value", "cross_attention.output"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
}
"""`--lora.targets` groups -> the linear layers of every block (`nextscale.transformer.block.Block`)."""

NOT_ARCHITECTURE = ("attention_backend", "dropout", "attention_dropout", "drop_path")
"""Config fields that change how a transformer runs or trains, not which weights it has."""


def target_pattern(groups: tuple[str, ...]) -> str:
    """The regular expression (peft's `target_modules`, matched against whole module names) of `groups`."""
    unknown = [group for group in groups if group not in TARGET_GROUPS]
    if unknown or not groups:
        raise ValueError(f"LoRA targets must be among {list(TARGET_GROUPS)}, got {list(groups)}")
    names = [name.replace(".", r"\.") for group in groups for name in TARGET_GROUPS[group]]
    return r"blocks\.\d+\.(" + "|".join(names) + ")"


def base_identity(transformer: nn.Module) -> dict:
    """What an adapter records of its base: the architecture (config fields) and a SHA-256 of the weights,
    hashed in float16 in key order so that a base stored in float16 or float32 hashes alike."""
    config = {k: v for k, v in dataclasses.asdict(transformer.config).items() if k not in NOT_ARCHITECTURE}
    digest = hashlib.sha256()
    for key, value in sorted(transformer.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=list).encode()).hexdigest()
    return {"config": json.loads(json.dumps(config, default=list)), "config_sha256": config_hash,
            "weights_sha256": digest.hexdigest()}


def check_base(adapter_dir: Path, recorded: dict, transformer: nn.Module) -> None:
    """A one-line ValueError when `transformer` is not the base the adapter was trained on."""
    if has_adapter(transformer):
        raise ValueError(f"adapter {adapter_dir}: the transformer already carries an adapter; load the base "
                         "pipeline again to use another one")
    ours = base_identity(transformer)
    theirs = recorded.get("config", {})
    differ = [f"{key}: {theirs.get(key)} there, {value} here" for key, value in ours["config"].items()
              if theirs.get(key) != value]
    where = f" (trained on {recorded['pipeline']})" if recorded.get("pipeline") else ""
    if differ:
        raise ValueError(f"adapter {adapter_dir} fits another base transformer{where}: {'; '.join(differ)}")
    if recorded.get("weights_sha256") != ours["weights_sha256"]:
        raise ValueError(f"adapter {adapter_dir} fits another base transformer{where}: same architecture, other "
                         f"weights (sha256 {str(recorded.get('weights_sha256'))[:12]} there, "
                         f"{ours['weights_sha256'][:12]} here)")


def peft_config(settings: dict):
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      target_modules=settings["target_modules"], bias="none")


def inject(transformer: nn.Module, settings: dict) -> nn.Module:
    """Wrap the targeted linear layers of `transformer` in peft's LoRA layers (in place); only the LoRA
    matrices require gradients afterwards."""
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(peft_config(settings), transformer, adapter_name=ADAPTER_NAME)


def lora_settings(rank: int, alpha: float | None, targets: tuple[str, ...], dropout: float = 0.0) -> dict:
    """The LoRA part of adapter_config.json (peft's field names)."""
    if rank < 1:
        raise ValueError(f"--lora.rank must be >= 1, got {rank}")
    return {"peft_type": "LORA", "r": rank, "lora_alpha": float(rank if alpha is None else alpha),
            "lora_dropout": dropout, "target_modules": target_pattern(targets), "targets": list(targets)}


def lora_layers(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in transformer.named_modules() if isinstance(module, LoraLayer)]


def has_adapter(transformer: nn.Module) -> bool:
    return bool(lora_layers(transformer))


def adapter_state(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices alone, float32 and contiguous, under peft's saved key names."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    return {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def save_adapter(transformer: nn.Module, directory: str | os.PathLike, settings: dict, base: dict,
                 extra: dict | None = None) -> Path:
    """Write `directory/{adapter_config.json, adapter_model.safetensors}` from an injected transformer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state(transformer)
    save_file(state, str(directory / ADAPTER_WEIGHTS))
    config = {"format": ADAPTER_FORMAT, **settings, "base": base, "parameters": sum(v.numel() for v in state.values()),
              **(extra or {})}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    config_file = directory / ADAPTER_CONFIG
    if not config_file.is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not an adapter: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                                "(as train_var.py --lora.rank N writes under output_dir/adapter)")
    config = json.loads(config_file.read_text())
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{config_file} is not a {ADAPTER_FORMAT} adapter config")
    return config


def load_adapter(transformer: nn.Module, directory: str | os.PathLike, scale: float = 1.0) -> dict:
    """Check that the adapter at `directory` fits `transformer`, inject it (in place) at `scale` and return
    its config. Call it before casting the transformer to a low-precision dtype."""
    from peft import set_peft_model_state_dict

    config = read_adapter_config(directory)
    check_base(Path(directory), config.get("base", {}), transformer)
    device = next(transformer.parameters()).device
    inject(transformer, config)
    state = load_file(str(Path(directory) / ADAPTER_WEIGHTS), device=str(device))
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise ValueError(f"adapter {directory}: weights do not match its config (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]})")
    set_adapter_scale(transformer, scale)
    transformer.requires_grad_(False)
    return config


def set_adapter_scale(transformer: nn.Module, scale: float) -> None:
    """Scale the adapter's update (0: the base model, 1: as trained)."""
    if not isinstance(scale, (int, float)) or scale != scale:
        raise ValueError(f"adapter scale must be a number, got {scale!r}")
    for _, module in lora_layers(transformer):
        module.set_scale(ADAPTER_NAME, float(scale))


def merge_adapter(transformer: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights (peft's merge) and put the plain linear layers back, so the
    transformer saves and loads as an ordinary one."""
    for name, module in lora_layers(transformer):
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(transformer.get_submodule(parent_name) if parent_name else transformer, child,
                module.get_base_layer())
    return transformer


def merge_command(pipeline: str, adapter: str, out: str, scale: float = 1.0) -> Path:
    """Write a full pipeline at `out`: `pipeline` with the adapter at `adapter` merged in."""
    from nextscale.sampling.pipeline import PIPELINE_FILE, load_pipeline, read_spec, write_pipeline

    base = load_pipeline(pipeline)
    load_adapter(base.transformer, adapter, scale)
    merge_adapter(base.transformer)
    spec = read_spec(base.directory / PIPELINE_FILE)
    return write_pipeline(out, base.tokenizer, base.transformer, spec["text_encoder"], spec.get("text_max_length"),
                          sampling=base.recommended)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nextscale.sampling.adapters", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge an adapter into a full pipeline directory")
    merge.add_argument("--pipeline", required=True, help="the base pipeline directory the adapter was trained on")
    merge.add_argument("--adapter", required=True, help="the adapter directory (output_dir/adapter)")
    merge.add_argument("--out", required=True, help="where to write the merged pipeline")
    merge.add_argument("--scale", type=float, default=1.0, help="adapter scale to merge at (default 1)")
    args = parser.parse_args(argv)
    try:
        out = merge_command(args.pipeline, args.adapter, args.out, args.scale)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    print(f"merged {args.adapter} into {args.pipeline}: {out}")


if __name__ == "__main__":
    cli()
