"""Sizes given once: the tokenizer training's `--image-size` picks a size preset, the transformer training
takes the image size from its tokenizer.

Both work by choosing the defaults of the command line before it is parsed, so that every other option
(e.g. `--model.channel-mult`) still overrides the preset and is checked against the right size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from nextscale.data import DataConfig
from nextscale.tokenizer import TokenizerConfig

if TYPE_CHECKING:
    from nextscale.train.tokenizer_loop import TokenizerTrainConfig
    from nextscale.train.var_loop import VarTrainConfig


def option_value(argv: list[str], name: str) -> str | None:
    """The last value given to `name` (`--name VALUE` or `--name=VALUE`), or None."""
    value = None
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def is_demo_data(source: str, image_size: int | None) -> bool:
    """Whether data of `source` at `image_size` px (None: the default size) is the demo preset's: the synthetic
    portraits at 64 px."""
    return source == DataConfig.source and image_size in (None, DataConfig.image_size)


def tokenizer_defaults(argv: list[str]) -> TokenizerTrainConfig | None:
    """The tokenizer training's defaults when the run is not the demo preset: with `--image-size N`, at N px
    (data, model and its size preset); with `--image-size N` or another `--data.source`, no alignment (the
    demo's teacher knows only the synthetic portraits at 64 px) unless `--alignment.teacher` is given."""
    from nextscale.tokenizer.losses.alignment import AlignmentConfig
    from nextscale.train.tokenizer_loop import TokenizerTrainConfig

    value = option_value(argv, "--image-size")
    if value is not None and not value.isdigit():
        return None  # not a number: the parser reports it
    size = None if value is None else int(value)
    source = option_value(argv, "--data.source") or DataConfig.source
    if is_demo_data(source, size):
        return None  # the demo preset
    sized = {} if size is None else dict(image_size=size, model=TokenizerConfig.for_image_size(size),
                                         data=DataConfig(image_size=size))
    return TokenizerTrainConfig(alignment=AlignmentConfig(teacher="none"), **sized)


def tokenizer_image_size(tokenizer: str) -> int | None:
    """The image size in a local tokenizer directory's config.json, or None (a hub id, or not there yet)."""
    path = Path(tokenizer) / "config.json"
    try:
        return int(json.loads(path.read_text())["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def var_defaults(argv: list[str]) -> VarTrainConfig | None:
    """The transformer training's defaults with the data at its tokenizer's image size."""
    from nextscale.train.var_loop import VarTrainConfig

    size = tokenizer_image_size(option_value(argv, "--tokenizer") or VarTrainConfig.tokenizer)
    if size is None or size == DataConfig.image_size:
        return None
    return VarTrainConfig(data=DataConfig(image_size=size))


def check_tokenizer_size(data: DataConfig, tokenizer_size: int, option: str = "--data.image-size") -> None:
    """ValueError naming the fix when the data's image size differs from the tokenizer's."""
    if data.image_size != tokenizer_size:
        raise ValueError(f"the tokenizer works at {tokenizer_size} px but {option} is {data.image_size}: drop "
                         f"{option} (train_var.py takes the size from --tokenizer)")
