"""The one place where a training's defaults are decided, before its command line is parsed.

`resolve(config_class, argv)` builds the defaults of `train_tokenizer.py` and `train_var.py` from layers,
each on top of the one before:

    the class's own defaults (the offline demo preset)
    < the run's saved train_config.json     (with --resume, when output_dir has one)
    < --preset NAME                          (`PRESETS`: named sizes, e.g. var-d16)
    < --config FILE                          (a recipe: YAML with a `tokenizer:` and a `var:` section)
    < the sizes the command line gives       (--image-size N, --model.depth D and what they imply)

and tyro parses every option of the command line on top of the result (its `default=` instance), so
`--help` shows a preset's or a recipe's values as the defaults. The implicit rules live here alone:

- `--image-size N` (or `image_size:` in a recipe) sets the data and model sizes and picks the tokenizer's
  size preset (`TokenizerConfig.for_image_size`); `--model.*` options override it;
- the demo preset's alignment (the bundled teacher, which knows only the synthetic portraits at 64 px)
  is off for any other data or size unless a teacher is named (`default_alignment`);
- `train_var.py` takes the image size from its tokenizer's config.json (over a preset's or recipe's);
- `--model.depth D` (or `depth:` in a recipe) that changes the transformer's depth sets its width to
  64 * D and its heads to D, heads of 64 (VAR's rule), unless the same layer gives the width (the heads
  stay of 64) or the heads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nextscale.data import DataConfig
from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer.config import size_preset
from nextscale.tokenizer.losses.alignment import AlignmentConfig
from nextscale.train.recipes import build, checked, load_recipe, merge, saved_config

if TYPE_CHECKING:
    from nextscale.train.tokenizer_loop import TokenizerTrainConfig
    from nextscale.train.var_loop import VarTrainConfig

T = TypeVar("T")

DEMO_TEACHER = DEMO_PIPELINE / "teacher"
"""The demo preset's alignment teacher, bundled: the tiny DINOv2 that `nextscale.portraits.teacher` trains on
the synthetic portraits (never the judge)."""

RESOLVER_OPTIONS = ("--preset", "--config")
"""The options the resolver reads itself; the parser never sees them."""

SAVED_CONFIG = "train_config.json"
"""What every run writes into its output directory (`Runtime.run`): the config it trained with."""


def demo_alignment() -> AlignmentConfig:
    """The demo preset's alignment: the last scale, weight 0.1, the bundled teacher at 64 px
    (docs/experiments/alignment-weight-0.1.md)."""
    return AlignmentConfig(teacher=str(DEMO_TEACHER), weight=0.1, scales="last", teacher_resolution=64)


def is_demo_data(source: str, image_size: int | None) -> bool:
    """Whether data of `source` at `image_size` px (None: the default size) is the demo preset's: the synthetic
    portraits at 64 px."""
    return source == DataConfig.source and image_size in (None, DataConfig.image_size)


def default_alignment(source: str, image_size: int | None) -> AlignmentConfig:
    """The alignment a tokenizer training gets when none is named: the demo preset's for the demo's data,
    off (with DINOv2's settings, for a teacher named later) for any other source or size."""
    return demo_alignment() if is_demo_data(source, image_size) else AlignmentConfig(teacher="none")


# VAR's VQVAE (vae_ch160v4096z32, `nextscale.tokenizer.var_weights`): 16x downsampling, 4096 codes of width 32.
VAR_TOKENIZER: dict[str, Any] = dict(
    latent_dim=32, vocab_size=4096, encoder_channels=160, decoder_channels=160, encoder_res_blocks=2,
    decoder_res_blocks=3, mid_attention=True, mid_res_blocks=2, level_attention=True, quant_convs=True,
    downsample_padding="asymmetric", lookup="l2", num_phi=4, phi_mix=0.5, norm_groups=32,
)


def var_preset(depth: int, image_size: int = 256) -> dict[str, dict[str, Any]]:
    """VAR-d`depth` (Tian et al. 2024): its VQVAE's shape at `image_size` px for the tokenizer training, and
    `TransformerConfig.var(depth)`'s shape (width 64 * depth, depth heads, drop path 0.1 * depth / 24,
    l2-normalised queries and keys without a key bias) for the transformer training."""
    transformer = dict(depth=depth, width=64 * depth, num_heads=depth, drop_path=0.1 * depth / 24, qk_norm=True,
                       key_bias=False)
    return {"tokenizer": {"image_size": image_size, "model": dict(VAR_TOKENIZER)}, "var": {"model": transformer}}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {"tokenizer": {}, "var": {}},
    "var-d16": var_preset(16),
    "var-d20": var_preset(20),
    "var-d24": var_preset(24),
    "var-d30": var_preset(30),
    "var-d36": var_preset(36, image_size=512),
}
"""Named sizes for both trainings (--preset NAME): `demo` is the classes' own defaults (the offline demo); the
`var-dN` presets are VAR's model sizes (its d36 at 512 px; VAR's shared AdaLN for d36 has no option here)."""

def option_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given to `name` (`--name VALUE` or `--name=VALUE`, `-` or `_` between words), or None."""
    spellings = {name, "--" + name[2:].replace("-", "_")}
    value = None
    for index, arg in enumerate(argv):
        flag, equals, rest = arg.partition("=")
        if flag in spellings:
            if equals:
                value = rest
            elif index + 1 < len(argv):
                value = argv[index + 1]
    return value


def parser_arguments(argv: Sequence[str]) -> list[str]:
    """`argv` without the options the resolver reads itself (`RESOLVER_OPTIONS` and their values)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag, equals, _ = arg.partition("=")
        if flag in RESOLVER_OPTIONS:
            skip = not equals
            continue
        kept.append(arg)
    return kept


def integer_option(argv: Sequence[str], name: str) -> int | None:
    """`option_value` as an int; None when absent or not a number (the parser reports that one)."""
    value = option_value(argv, name)
    return int(value) if value is not None and value.isdigit() else None


# ---------------------------------------------------------------------------------------------------------
# Layers: nested dicts of option values, keyed by the dataclass fields' names


def section_of(config_class: type) -> str:
    """The recipe section a training reads (`RECIPE_SECTION` of its config class)."""
    section = getattr(config_class, "RECIPE_SECTION", None)
    if section is None:
        raise TypeError(f"{config_class.__name__} has no RECIPE_SECTION: it is not a training the resolver knows")
    return section


# ---------------------------------------------------------------------------------------------------------
# The implicit rules


def expand_tokenizer_layer(layer: dict) -> dict:
    """A layer's `image_size` as the sizes it sets (data, model, the size preset's channel_mult and
    scale_sizes), under the layer's own explicit values."""
    size = layer.get("image_size")
    if size is None:
        return layer
    sized = {"model": {"image_size": size, **size_preset(size).fields()}, "data": {"image_size": size}}
    return merge(sized, layer)


def expand_var_layer(layer: dict, depth_below: int) -> dict:
    """A layer's transformer depth that changes the depth below it as VAR's shape: width 64 * depth and heads
    of 64 (depth heads), under the layer's own explicit width and heads (a given width keeps heads of 64)."""
    model = layer.get("model", {})
    depth = model.get("depth")
    if depth is None or depth == depth_below:
        return layer
    width = model.get("width", 64 * depth)
    return merge({"model": {"width": width, "num_heads": max(1, width // 64)}}, layer)


def tokenizer_image_size(tokenizer: str) -> int | None:
    """The image size in a local tokenizer directory's config.json, or None (a hub id, or not there yet)."""
    path = Path(tokenizer) / "config.json"
    try:
        return int(json.loads(path.read_text())["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def command_line_layer(section: str, argv: Sequence[str]) -> dict:
    """The options of the command line that imply others: the tokenizer's --image-size, the transformer's
    --model.depth (with the --model.width and --model.num-heads given beside it). tyro parses them again on
    top, as given."""
    if section == "tokenizer":
        size = integer_option(argv, "--image-size")
        return {} if size is None else {"image_size": size}
    model = {key: value for key, value in (("depth", integer_option(argv, "--model.depth")),
                                           ("width", integer_option(argv, "--model.width")),
                                           ("num_heads", integer_option(argv, "--model.num-heads")))
             if value is not None}
    return {"model": model} if model else {}


def alignment_layer(merged: dict, argv: Sequence[str]) -> dict:
    """The tokenizer's alignment for its data (`default_alignment`), placed under every other layer."""
    data = merged.get("data", {})
    source = option_value(argv, "--data.source") or data.get("source", DataConfig.source)
    size = integer_option(argv, "--image-size") or integer_option(argv, "--data.image-size") or data.get("image_size")
    return {"alignment": dataclasses.asdict(default_alignment(source, size))}


def tokenizer_size_layer(merged: dict, argv: Sequence[str], config_class: type) -> dict:
    """The transformer's image size from its tokenizer's config.json, placed over the preset, the recipe and
    a saved config (the tokenizer decides; a --data.image-size given beside it is checked against it)."""
    tokenizer = option_value(argv, "--tokenizer") or merged.get("tokenizer", config_class.tokenizer)
    size = tokenizer_image_size(tokenizer)
    return {"data": {"image_size": size}} if size is not None else {}


def resolve(config_class: type[T], argv: Sequence[str]) -> T | None:
    """The defaults of a training's command line (`config_class`: `TokenizerTrainConfig` or `VarTrainConfig`),
    from the layers of this module's docstring; None when they are the class's own."""
    section = section_of(config_class)
    base = config_class()
    layers: list[tuple[str, str, dict]] = []  # (where the values come from, their names' prefix there, values)
    resume = option_value(argv, "--resume")
    preset, recipe = option_value(argv, "--preset"), option_value(argv, "--config")
    for option, value in (("--preset", preset), ("--config", recipe)):
        if value is None and any(arg.partition("=")[0] == option for arg in argv):
            raise ValueError(f"{option} needs a value")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset}: unknown; choose from {', '.join(PRESETS)}")
        layers.append((f"--preset {preset}", "", PRESETS[preset][section]))
    if recipe is not None:
        sections = load_recipe(recipe)
        if not sections[section]:
            raise ValueError(f"--config {recipe} has no {section}: section (the options of this training)")
        layers.append((f"--config {recipe}", f"{section}.", sections[section]))
    layers.append(("the command line", "", command_line_layer(section, argv)))
    checked_layers = [(where, checked(config_class, values, where, prefix)) for where, prefix, values in layers]
    if resume is not None:
        output_dir = option_value(argv, "--output-dir")
        if output_dir is None:
            output_dir = next((values["output_dir"] for _, values in reversed(checked_layers)
                               if "output_dir" in values), base.output_dir)  # type: ignore[attr-defined]
        saved = Path(output_dir) / SAVED_CONFIG
        if saved.is_file():
            checked_layers.insert(0, (str(saved), checked(config_class, saved_config(saved, config_class),
                                                          str(saved))))
    merged: dict = {}
    for _, values in checked_layers:
        if section == "tokenizer":
            values = expand_tokenizer_layer(values)
        else:
            below = merged.get("model", {}).get("depth", base.model.depth)  # type: ignore[attr-defined]
            values = expand_var_layer(values, below)
        merged = merge(merged, values)
    if section == "tokenizer":
        merged = merge(alignment_layer(merged, argv), merged)
    else:
        merged = merge(merged, tokenizer_size_layer(merged, argv, config_class))
    resolved = build(config_class, base, merged)
    return None if resolved == base else resolved


def tokenizer_defaults(argv: Sequence[str]) -> TokenizerTrainConfig | None:
    """`resolve` for the tokenizer training (`train_tokenizer.py`)."""
    from nextscale.train.tokenizer_loop import TokenizerTrainConfig

    return resolve(TokenizerTrainConfig, argv)


def var_defaults(argv: Sequence[str]) -> VarTrainConfig | None:
    """`resolve` for the transformer training (`train_var.py`)."""
    from nextscale.train.var_loop import VarTrainConfig

    return resolve(VarTrainConfig, argv)


def resolver_of(config_class: type) -> Any:
    """`resolve` bound to `config_class` when it is a training the resolver knows, else None."""
    if getattr(config_class, "RECIPE_SECTION", None) is None:
        return None
    return lambda argv: resolve(config_class, argv)


def check_tokenizer_size(data: DataConfig, tokenizer_size: int, option: str = "--data.image-size") -> None:
    """ValueError naming the fix when the data's image size differs from the tokenizer's."""
    if data.image_size != tokenizer_size:
        raise ValueError(f"the tokenizer works at {tokenizer_size} px but {option} is {data.image_size}: drop "
                         f"{option} (train_var.py takes the size from --tokenizer)")


def help_entries() -> list[tuple[str, str]]:
    """The resolver's own options as the training's --help lists them first."""
    return [
        ("--preset {" + ",".join(PRESETS) + "}",
         "Named sizes: demo (the offline demo, the default) or VAR's (the tokenizer: its VQVAE; the transformer: "
         "width 64 * N, N heads). Its values are the defaults below."),
        ("--config FILE",
         "A recipe (YAML, recipes/*.yaml): its section for this training gives the defaults, over --preset; "
         "the options given here override it."),
    ]
