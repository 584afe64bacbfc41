"""`save_pretrained` / `from_pretrained` for our models: `config.json` + `model.safetensors`.

A model directory holds the frozen config dataclass as JSON and the weights as safetensors; it is
written atomically (a temporary sibling directory renamed into place), so an interrupted save never
leaves a half-written model where a good one was. Pickled weights (`.pt`, `.pth`, `.bin`) are refused:
unpickling runs arbitrary code.

Shared by the tokenizer and the transformer (the transformer imports this module, never the
autoencoder).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

T = TypeVar("T", bound="PretrainedMixin")

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read into memory of their own (on the CPU).

    `safetensors.torch.load_file` maps the file privately: its tensors change when the file is overwritten
    in place (as `cp` does) and fault once it is truncated, while the model holding them runs. Reading each
    tensor straight into a fresh one keeps the weights in memory once, as the mapping did, and owned.
    Raises ValueError for a file that is not a whole safetensors file.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= size - 8:
            raise ValueError(f"the header length {length} does not fit a file of {size} bytes")
        header = json.loads(handle.read(length))
        start = 8 + length
        tensors: dict[str, torch.Tensor] = {}
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda item: item[1]["data_offsets"][0])
        for name, entry in entries:
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{name}: dtype {entry['dtype']} is not one this loader reads")
            tensor = torch.empty(entry["shape"], dtype=SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            expected = tensor.numel() * tensor.element_size()
            if end - begin != expected or start + end > size:
                raise ValueError(f"{name}: {end - begin} bytes at offset {begin} for {expected}, in {size - start} "
                                 "bytes of data")
            if expected:
                handle.seek(start + begin)
                if handle.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy())) != expected:
                    raise ValueError(f"{name}: the file ends inside its data")
            tensors[name] = tensor
    return tensors


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


class ConfigTypeError(ValueError):
    """A config.json value of the wrong type."""


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check a JSON value against the field's annotation; return it as the config holds it (lists become
    the tuples a frozen config declares, ints the floats a float field declares).

    Raises ConfigTypeError naming the field: "32" for an int, 6.0 for a depth, null where None is not
    allowed are mistakes in a hand-edited config.json, not values to guess about.
    """
    if annotation is Any:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigTypeError as error:
                errors.append(error)
        raise errors[0]
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigTypeError(f"{name} is {value!r}, expected one of {list(args)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"{name} is {value!r}, expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigTypeError(f"{name} is {value!r}, expected {len(args)} values")
        return tuple(_coerce(v, args[i] if args else Any, f"{name}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, dict):
            return config_from_dict(annotation, value)
    else:
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, f"a {getattr(annotation, '__name__', annotation)} object")
    raise ConfigTypeError(f"{name} is {json.dumps(value)}, expected {expected}")


def read_json_object(path: Path, expected: str = "a JSON object") -> dict:
    """A JSON file that must hold an object; a ValueError names the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, expected {expected}")
    return data


def drop_removed_options(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys of the options `cls` no longer has (its `REMOVED_OPTIONS`: option -> the
    value that left it off). A removed option holding that value is dropped; any other value raises a
    one-line ValueError naming the option and the commit (`cls.REMOVED_AT`) whose code still has it."""
    removed: dict[str, Any] = getattr(cls, "REMOVED_OPTIONS", {})
    for name, off in removed.items():
        if name in data and data[name] != off:
            raise ValueError(
                f"{name} is {json.dumps(data[name])}: the option was removed from {cls.__name__} (a config "
                f"loads only with its old default {json.dumps(off)}); use this model with nextscale at commit "
                f"{getattr(cls, 'REMOVED_AT', 'an older commit')}")
    return {k: v for k, v in data.items() if k not in removed}


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build the dataclass `cls` from a dict, naming unknown keys and ill-typed values; options the class
    has removed are dropped while off and refused while on (`drop_removed_options`)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    data = drop_removed_options(cls, data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"config.json has fields {unknown} that {cls.__name__} does not know: the checkpoint was "
            "written by a different version or is a different kind of model"
        )
    return cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local model directory, or a hub repo id downloaded (or found in the local cache)."""
    path = Path(name_or_path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} is a pickled checkpoint; nextscale loads only safetensors directories "
            f"({CONFIG_NAME} + {WEIGHTS_NAME}). Convert it once in a trusted environment and save it "
            "with save_pretrained."
        )
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    looks_like_repo = str(name_or_path).count("/") == 1 and not str(name_or_path).startswith((".", "/"))
    if not looks_like_repo:
        raise FileNotFoundError(f"no model directory at {path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as err:  # offline, missing repo, auth: say which and what to do
        raise FileNotFoundError(
            f"{name_or_path} is neither a local directory nor a reachable hub repo ({type(err).__name__}: "
            f"{err}). Pass a directory that holds {CONFIG_NAME} and {WEIGHTS_NAME}."
        ) from err


def _entries(root: Path) -> dict[Path, bool]:
    """Every path under `root` (relative) -> whether it is a folder (symlinks are not followed)."""
    found = {}
    for folder, folders, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in folders:
            found[base / name] = not (Path(folder) / name).is_symlink()
        for name in files:
            found[base / name] = False
    return found


def _merge_into(written: Path, target: Path) -> None:
    """Move what `written` holds into the folder `target`, replacing only its namesakes (file by file)."""
    for source in sorted(written.iterdir()):
        destination = target / source.name
        if source.is_dir() and destination.is_dir() and not destination.is_symlink():
            _merge_into(source, destination)
        else:
            os.replace(source, destination)


def atomic_write_dir(target: Path, write: typing.Callable[[Path], None]) -> None:
    """Call `write(tmp_dir)`, then put what it wrote at `target`, never deleting what it did not write.

    A new `target`, or one that holds nothing but entries `write` writes too (an earlier export), is
    swapped whole: its old contents are kept until the swap. A `target` folder that holds anything else
    (a user's notes, a model card) keeps it: each written file replaces its namesake inside it. A `target`
    that is a file, or whose entry of a written name is of the other kind (a folder where a file is
    written), is refused with a ValueError, and nothing is changed.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        raise ValueError(f"{target} is a file, not a folder: name a folder to write into (a new one is made)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); a model directory is meant to be shared
    try:
        write(tmp)
        if not target.exists():
            os.replace(tmp, target)
            return
        ours, theirs = _entries(tmp), _entries(target)
        clashes = [path for path, is_dir in ours.items() if path in theirs and theirs[path] != is_dir]
        if clashes:
            raise ValueError(f"{target / clashes[0]} is in the way of what is written there (a "
                             f"{'folder' if theirs[clashes[0]] else 'file'} of that name): move it, or choose "
                             "another folder")
        if set(theirs) <= set(ours) and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _merge_into(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_dir(
    directory: Path,
    class_name: str,
    config: Any,
    state: typing.Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
) -> None:
    """Write a model directory (`config.json` naming `class_name` + `model.safetensors`) into an existing or
    new `directory`, without building the model: converters write the weights they mapped directly."""
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"class": class_name, **config_to_dict(config)}
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


class PretrainedMixin:
    """Adds `save_pretrained` / `from_pretrained` to an `nn.Module` with a dataclass `self.config`.

    Subclasses set `config_class` and take the config as the only required constructor argument.
    """

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` + `model.safetensors` atomically; `dtype` optionally casts float weights."""
        state = self.state_dict()  # type: ignore[attr-defined]
        name = type(self).__name__
        atomic_write_dir(Path(directory), lambda tmp: write_model_dir(tmp, name, self.config, state, dtype))
        return Path(directory)

    @classmethod
    def load_config(cls, name_or_path: str | os.PathLike) -> Any:
        directory = resolve_model_dir(name_or_path)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a nextscale model directory")
        data = read_json_object(config_file, "a JSON object of config fields")
        kind = data.pop("class", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"{directory} holds a {kind}, not a {cls.__name__}")
        try:
            return config_from_dict(cls.config_class, data)
        except (TypeError, ValueError) as error:  # ill-typed or invalid values (the config's own checks)
            raise ValueError(f"{config_file}: {error}") from None

    @classmethod
    def from_pretrained(
        cls: type[T], name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> T:
        """Load a model saved by `save_pretrained` from a local directory or a hub repo id.

        The model is built with its parameters on the meta device and takes the loaded tensors as they are:
        no random initialisation is computed only to be overwritten, and the global random state is untouched.
        """
        directory = resolve_model_dir(name_or_path)
        config = cls.load_config(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        with init_empty_weights():  # parameters on the meta device: no random init that the weights replace
            model = cls(config)  # type: ignore[call-arg]
        try:
            state = read_safetensors(weights)  # on the CPU; the model moves to `map_location` below
        except Exception as error:  # truncated, damaged (ValueError, KeyError, JSON errors), OSError
            raise ValueError(f"{weights} is damaged or truncated ({type(error).__name__}: {error}); "
                             "export or download it again") from None
        reference = model.state_dict()  # type: ignore[attr-defined]
        mismatched = [(k, tuple(v.shape), tuple(reference[k].shape)) for k, v in state.items()
                      if k in reference and v.shape != reference[k].shape]
        if mismatched:
            key, theirs, ours = mismatched[0]
            sizes = set(theirs) ^ set(ours)
            fields = [f"{name}={value}" for name, value in dataclasses.asdict(config).items()
                      if isinstance(value, int) and not isinstance(value, bool) and value in sizes]
            suspects = f"; check {', '.join(fields)} in {CONFIG_NAME}" if fields else ""
            raise ValueError(f"{weights} does not fit its {CONFIG_NAME}: {key} has shape {theirs} in the weights, "
                             f"{ours} for the config ({len(mismatched)} tensors differ){suspects}")
        state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
        # assign: the loaded tensors become the parameters (they replace the meta ones, keeping requires_grad)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # type: ignore[attr-defined]
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {cls.__name__}({config}): missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        return model.to(map_location).eval()  # type: ignore[attr-defined]
