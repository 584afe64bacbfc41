"""Recipes and saved run configs as layers of values, checked against the training dataclasses.

A layer is a nested dict of option values named as the dataclass fields name them (`model: {depth: 16}`);
`checked` refuses unknown names and ill-typed values in one line naming where they came from, `merge`
stacks layers and `build` turns the result into a config instance. `load_recipe` reads a recipe file
(YAML), `saved_config` a run's train_config.json. The order of the layers is `nextscale.train.presets`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RECIPE_KEYS = ("tokenizer", "var", "notes")
"""The top-level keys of a recipe: one section per training, and notes the loader ignores."""


def merge(below: dict, above: dict) -> dict:
    """`above` on top of `below`, section by section (nested dicts merge; anything else is replaced)."""
    merged = dict(below)
    for key, value in above.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def nested(values: dict, where: str) -> dict:
    """Keys as the dataclass fields spell them: `learning-rate` is `learning_rate`, `model.depth: 16` is
    `model: {depth: 16}`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of options, got {type(values).__name__}")
    result: dict = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: {key!r} is not an option name")
        path = key.replace("-", "_").split(".")
        if isinstance(value, dict):
            value = nested(value, f"{where}.{key}")
        for part in reversed(path[1:]):
            value = {part: value}
        result = merge(result, {path[0]: value})
    return result


def _dataclass_type(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` (from YAML or JSON) as the field of type `hint` holds it: lists become tuples, ints floats
    where a float is declared; ValueError naming the option otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name)
            except ValueError:
                continue
    elif origin is typing.Literal:
        if value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(item, args[0], name) for item in value)
            if len(args) == len(value):
                return tuple(coerce(item, arg, name) for item, arg in zip(value, args))
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        return value
    raise ValueError(f"{name} is {json.dumps(value, default=str)}, expected {_describe(hint)}")


def checked(cls: type, values: dict, where: str, prefix: str = "") -> dict:
    """`values` with every key an option of `cls` (ValueError naming the closest one otherwise) and every
    value of its field's type."""
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls) if field.init]
    result = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ValueError(f"{where}: {prefix}{key} is not an option{hint}")
        inner = _dataclass_type(hints[key])
        if inner is not None:
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {prefix}{key} holds options ({prefix}{key}.NAME), not a value")
            result[key] = checked(inner, value, where, f"{prefix}{key}.")
        else:
            result[key] = coerce(value, hints[key], f"{where}: {prefix}{key}")
    return result


def build(cls: type[T], base: T, values: dict) -> T:
    """`base` with `values` on top; every dataclass is built once, from its final values (so its checks see
    no half-changed config)."""
    hints = typing.get_type_hints(cls)
    changes = {}
    for key, value in values.items():
        inner = _dataclass_type(hints[key])
        changes[key] = build(inner, getattr(base, key), value) if inner is not None else value
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[type-var]


# ---------------------------------------------------------------------------------------------------------
# Recipes


class _RecipeLoader:
    """YAML's safe loader reading floats as YAML 1.2 does (`3e-4` is a number, not the string YAML 1.1 makes
    of it)."""

    @staticmethod
    def make() -> type:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
            list("-+0123456789."),
        )
        return Loader


def load_recipe(path: str | Path) -> dict[str, dict]:
    """The sections of a recipe file (YAML): `tokenizer:` and `var:` (nested options as the dataclass fields
    name them), `notes:` ignored; ValueError naming the file for anything else."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such recipe file (see recipes/ for the bundled ones)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader.make())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path} is not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping with the sections {', '.join(RECIPE_KEYS[:2])}")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"--config {path}: unknown top-level keys {unknown}; a recipe has the sections "
                         f"{', '.join(RECIPE_KEYS)} (notes are ignored)")
    return {key: nested(data.get(key) or {}, f"--config {path}: {key}") for key in RECIPE_KEYS[:2]}


def saved_config(path: Path, config_class: type) -> dict:
    """The values of a run's train_config.json, as far as `config_class` still has them: keys it no longer
    has are dropped (the tokenizer's removed options only while they hold their old default,
    `TokenizerConfig.REMOVED_OPTIONS`)."""
    from nextscale.checkpoint import drop_removed_options, read_json_object

    def known(cls: type, values: dict, prefix: str) -> dict:
        values = drop_removed_options(cls, values)
        hints = typing.get_type_hints(cls)
        names = {field.name for field in dataclasses.fields(cls) if field.init}
        result = {}
        for key, value in values.items():
            if key in names:
                inner = _dataclass_type(hints[key])
                result[key] = known(inner, value, f"{prefix}{key}.") if inner and isinstance(value, dict) else value
        return result

    try:
        return known(config_class, read_json_object(path), "")
    except ValueError as error:
        raise ValueError(f"--resume: {path}: {error}") from None
