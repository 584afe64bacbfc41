"""`--help` that a person reads: the options a user sets first, with their descriptions, then every other
option one line each under its group's heading; `-H` / `--help-verbose` is tyro's full listing.

A config class opts in with `HELP_FIRST` (a ClassVar: dotted field names, e.g. "data.source"); the groups it
names in `HELP_COLLAPSED` (e.g. "adversarial") list their options' names and defaults in a paragraph. The
option names follow tyro's (`--eval-data.path`, `--model.no-mid-attention`); the descriptions are the
fields' docstrings, the defaults those of the instance the command line is parsed against.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WIDTH = 100
"""Columns of the help text."""
COLUMN = 28
"""Where the descriptions of the first options start."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), over the class and its bases; a subclass's wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag(path: Sequence[str], negated: bool = False) -> str:
    """tyro's option name of a field path: ("eval_data", "path") -> --eval-data.path."""
    parts = [part.replace("_", "-") for part in path]
    if negated:
        parts[-1] = "no-" + parts[-1]
    return "--" + ".".join(parts)


def metavar(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return metavar(args[0])
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in args if arg is not type(None)]
        inner = "|".join(metavar(arg) for arg in others)
        return "{None}|" + inner if type(None) in args else inner
    if origin is typing.Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{metavar(args[0])} [{metavar(args[0])} ...]"
        return " ".join(metavar(arg) for arg in args)
    return {int: "INT", float: "FLOAT", str: "STR", Path: "PATH"}.get(hint, "VALUE")


def shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f'"{item}"' if isinstance(item, str) and " " in item else str(item)
                        for item in value) if value else "()"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of the help: its invocation, description and default."""

    path: tuple[str, ...]
    invocation: str
    doc: str
    default: Any


def options(cls: type, instance: Any, prefix: tuple[str, ...] = ()) -> list[Option | tuple[tuple[str, ...], str]]:
    """Every option of `cls` in field order; a nested dataclass appears as (its path, its docstring) before
    its own options."""
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = field_docs(cls)
    found: list[Option | tuple[tuple[str, ...], str]] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        path, hint = (*prefix, field.name), hints[field.name]
        value = getattr(instance, field.name)
        bare = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if isinstance(bare, type) and dataclasses.is_dataclass(bare):
            found.append((path, docs.get(field.name, "")))
            found += options(bare, value, path)
        elif bare is bool:
            found.append(Option(path, f"{flag(path)}, {flag(path, negated=True)}", docs.get(field.name, ""), value))
        else:
            found.append(Option(path, f"{flag(path)} {metavar(hint)}", docs.get(field.name, ""), value))
    return found


def first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".") + "." if text else text


def clipped(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3].rstrip() + "..."


def described(invocation: str, text: str) -> list[str]:
    """An option with its description in a second column, wrapped."""
    lines = textwrap.wrap(text, WIDTH - COLUMN) or [""]
    if len(invocation) + 4 <= COLUMN:
        first, rest = [f"  {invocation:<{COLUMN - 2}}{lines[0]}"], lines[1:]
    else:
        first, rest = [f"  {invocation}"], lines
    return first + [" " * COLUMN + line for line in rest]


def one_line(option: Option) -> str:
    """An option, its default and as much of its description's first sentence as fits one line."""
    line = f"  {option.invocation} (default: {shown(option.default)})"
    sentence = first_sentence(option.doc)
    return clipped(line + "  " + sentence if sentence and WIDTH - len(line) > 14 else line)


def packed(items: list[str]) -> list[str]:
    """`items` joined by commas into indented lines of at most WIDTH columns, never breaking an item."""
    lines = ["  "]
    for index, item in enumerate(items):
        item += "," if index < len(items) - 1 else ""
        if len(lines[-1]) + len(item) + 1 > WIDTH and lines[-1].strip():
            lines.append("  ")
        lines[-1] += ("" if lines[-1] == "  " else " ") + item
    return lines


def format_help(config_class: type, instance: Any, prog: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The help of `config_class` parsed against `instance` (whose values are the defaults shown)."""
    first: tuple[str, ...] = config_class.HELP_FIRST
    everything = options(config_class, instance)
    by_name = {".".join(item.path): item for item in everything if isinstance(item, Option)}
    unknown = [name for name in first if name not in by_name]
    if unknown:
        raise ValueError(f"{config_class.__name__}.HELP_FIRST names no option {unknown}")
    usage = f"usage: {prog} [-h] [-H]"
    for invocation, _ in extra:
        name, _, value = invocation.partition(" ")
        usage += f" [{name} {'NAME' if value.startswith('{') else value}]"
    usage += " [OPTIONS]"
    lines = [usage, ""]
    description = inspect.getdoc(config_class) or ""
    for paragraph in description.split("\n\n"):
        lines += textwrap.wrap(" ".join(paragraph.split()), WIDTH) + [""]
    lines.append("Start here:")
    lines += described("-h, --help", "this help; -H, --help-verbose: every option with its full description")
    for invocation, text in extra:
        lines += described(invocation, text)
    for name in first:
        option = by_name[name]
        lines += described(option.invocation, f"{option.doc} (default: {shown(option.default)})")
    collapsed = {tuple(name.split(".")) for name in getattr(config_class, "HELP_COLLAPSED", ())}
    lines += ["", "Every other option, with its default (-H describes each); a group in brief lists its options as",
              "NAME (default), each set as --GROUP.NAME VALUE ([no-]NAME: a flag and its negation)."]
    groups: dict[tuple[str, ...], tuple[str, list[Option]]] = {(): ("Options:", [])}
    for item in everything:
        if isinstance(item, tuple):
            path, doc = item
            groups[path] = (f"{flag(path)}.*: {first_sentence(doc)}", [])
        elif ".".join(item.path) not in first:
            groups[item.path[:-1]][1].append(item)
    for path, (heading, entries) in groups.items():
        if not entries:
            continue
        if path in collapsed:
            names = [f"{'[no-]' if ', ' in option.invocation else ''}{flag(option.path[-1:])[2:]} "
                     f"({shown(option.default)})" for option in entries]
            lines += ["", clipped(heading), *packed(names)]
        else:
            lines += ["", clipped(heading), *(one_line(option) for option in entries)]
    return "\n".join(lines).rstrip() + "\n"
