"""`sample.py`'s options and logic: prompts (or class labels) in, PNGs (+ grid, + progressions) out.

nextscale-sample --prompt "a man with a beard" --prompt "a woman with glasses" --num-images 4 --out samples
nextscale-sample --checkpoint var-d16 --class-label 207 --class-label 980   (a class-conditional pipeline)
(the same as `python sample.py ...` and `python -m nextscale.sampling ...`)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from tyro.conf import OmitArgPrefixes, Suppress, UseAppendAction

from nextscale.devices import resolve_device
from nextscale.errors import fail, run_cli
from nextscale.images import grid_columns, save_grid
from nextscale.sampling.edit_cli import EditArgs, ZoomArgs, check_edit_args, run_edits, run_zoom
from nextscale.sampling.outputs import image_stem, save_images, save_progression
from nextscale.sampling.pipeline import Pipeline, load_pipeline
from nextscale.sampling.precision import DTYPES as PRECISIONS
from nextscale.sampling.sampler import SamplingConfig, generate

DTYPES = PRECISIONS  # the names --dtype takes ("int8" included)
DEFAULTS = SamplingConfig()


@dataclass(frozen=True)
class SampleArgs:
    """Generate images from text prompts with a trained nextscale pipeline (next-scale prediction, VAR)."""

    prompt: UseAppendAction[tuple[str, ...]] = ()
    """A text prompt; repeat the flag for several (--prompt "a cat" --prompt "a dog")."""
    prompts_file: Path | None = None
    """A text file with one prompt per line (blank lines skipped); adds to --prompt."""
    class_label: UseAppendAction[tuple[int, ...]] = ()
    """A class label for a class-conditional pipeline (e.g. ImageNet 207 with a converted official VAR);
    repeat the flag for several. Instead of --prompt."""
    num_images: int = 1
    """Images per prompt."""
    seed: int = 0
    """Base seed: image i (counting over all prompts and repeats) uses seed + i, whatever the batch size."""
    cfg: float | None = None
    """Classifier-free guidance strength (VAR: logits = (1 + t) cond - t uncond, t ramping to cfg); 0 = off.
    Default: the pipeline's recommended setting (pipeline.json "sampling"), else 4."""
    guidance_schedule: Literal["linear", "constant"] = DEFAULTS.guidance_schedule
    """linear: t grows with the scale up to --cfg (VAR); constant: t = --cfg at every scale."""
    guidance_off_last: int = DEFAULTS.guidance_off_last
    """Turn guidance off for the last N scales (Switti): faster, the finest scales barely need it."""
    top_k: int | None = None
    """Sample only among the k most likely codes; 0 = all codes, 1 = greedy. Default: the pipeline's
    recommended setting, else 900."""
    top_p: float | None = None
    """Nucleus sampling: keep the most likely codes up to this probability mass; 1 = all. Default: the
    pipeline's recommended setting, else 0.95."""
    temperature: float = DEFAULTS.temperature
    """Softmax temperature; lower is more conservative, 0 = greedy (argmax)."""
    out: Path = Path("samples")
    """Output directory: one PNG per image (<index>-<prompt slug>.png) and grid.png."""
    checkpoint: str | None = None
    """A pipeline directory (as train_var.py writes under output_dir/pipeline) or hub id; default: the bundled
    demo model at checkpoints/demo."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run; auto = cuda when available."""
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = "float32"
    """Weights and activations dtype (the sampling arithmetic stays float32). int8: the transformer's linear
    layers in int8, a CPU path, the fastest there at a small cost in quality
    (docs/experiments/int8-and-fast-decoder.md)."""
    decoder_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The tokenizer decoder's dtype. auto: bf16 (channels-last) on a CPU with native bf16 when --dtype is
    float32 or int8, else --dtype; float32 gives the reference pixels (docs/experiments/int8-and-fast-decoder.md)."""
    adapter: str | None = None
    """A LoRA adapter directory (train_var.py --lora.rank N writes output_dir/adapter) to put on the pipeline's
    transformer; it must have been trained on this pipeline's transformer."""
    adapter_scale: float = 1.0
    """Strength of --adapter: 0 samples the base model, 1 the adapter as trained."""
    compile: bool = False
    """torch.compile the transformer's blocks: minutes of compilation first, then faster scales; pays
    only for many images (docs/experiments/performance-suite-cpu.md)."""
    batch_size: int = 8
    """Images per forward batch (each batch runs 2x rows while guidance is on)."""
    grid: bool = True
    """Also write grid.png, close to square; --no-grid for large runs (e.g. 50,000 FID samples), which then keep
    no image in memory."""
    grid_max: int = 100
    """grid.png shows at most the first N images (a 10 x 10 grid by default); all are saved as PNGs."""
    save_progression: bool = False
    """Also save each image's coarse-to-fine progression as a strip PNG and an animated GIF."""
    progress: bool = True
    """Show a progress bar over the scales."""
    editing: Annotated[EditArgs, OmitArgPrefixes] = EditArgs()
    """Editing (inpaint, outpaint, variations) and per-scale prompts."""
    zooming: Annotated[ZoomArgs, OmitArgPrefixes] = ZoomArgs()
    """Zoom stacks."""

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.batch_size < 1:
            raise ValueError(f"--num-images and --batch-size must be >= 1, got {self.num_images}, {self.batch_size}")
        if self.grid_max < 1:
            raise ValueError(f"--grid-max must be >= 1 (or pass --no-grid), got {self.grid_max}")

    def sampling_config(self, recommended: dict | None = None) -> SamplingConfig:
        """The options, where not given the pipeline's `recommended` settings, else SamplingConfig's defaults."""
        chosen = {**DEFAULT_SETTINGS, **(recommended or {})}
        return SamplingConfig(
            cfg_scale=chosen["cfg_scale"] if self.cfg is None else self.cfg,
            guidance_schedule=self.guidance_schedule,
            guidance_off_last=self.guidance_off_last,
            top_k=chosen["top_k"] if self.top_k is None else self.top_k,
            top_p=chosen["top_p"] if self.top_p is None else self.top_p,
            temperature=self.temperature,
        )


@dataclass(frozen=True)
class PlainSampleArgs(SampleArgs):
    # sample.py's options without editing, per-scale prompts and zoom (`args_class`); the docstring is SampleArgs'
    editing: Suppress[EditArgs] = EditArgs()
    zooming: Suppress[ZoomArgs] = ZoomArgs()


PlainSampleArgs.__doc__ = SampleArgs.__doc__

EDIT_FLAGS = frozenset(f"--{prefix}{field.name.replace('_', '-')}" for cls in (EditArgs, ZoomArgs)
                       for field in dataclasses.fields(cls) for prefix in ("", "no-"))
"""The options of editing, per-scale prompts and zoom (and the --no- forms of their flags)."""


def args_class(argv: Sequence[str]) -> type[SampleArgs]:
    """What sample.py parses `argv` into: `SampleArgs` when an editing, per-scale prompt or zoom option is
    given (or --help, which lists them), else `PlainSampleArgs`, which has none of them to parse."""
    for arg in argv:
        if arg in ("-h", "--help") or (arg.startswith("--") and
                                       "--" + arg[2:].split("=", 1)[0].replace("_", "-") in EDIT_FLAGS):
            return SampleArgs
    return PlainSampleArgs


DEFAULT_SETTINGS = {"cfg_scale": DEFAULTS.cfg_scale, "top_k": DEFAULTS.top_k, "top_p": DEFAULTS.top_p}


def settings_note(args: SampleArgs, recommended: dict | None, config: SamplingConfig) -> str | None:
    """One line saying where the settings the command line left out come from: the pipeline's recommended
    settings (and their source), or the defaults when the pipeline records none; None when all are given."""
    taken = [name for name, value in (("--cfg", args.cfg), ("--top-k", args.top_k), ("--top-p", args.top_p))
             if value is None]
    if not taken:
        return None
    top_k = "off" if not config.top_k else str(config.top_k)
    used = f"cfg {config.cfg_scale:g}, top-k {top_k}, top-p {config.top_p:g}; {', '.join(taken)} override them"
    if not recommended:
        return f"sampling with the defaults (VAR's demo settings; the pipeline records no recommended settings): {used}"
    return f"sampling with the pipeline's recommended settings ({recommended.get('source', 'its evaluation')}): {used}"


MAX_SEED = 2**63 - 1


def validate(args: SampleArgs) -> list[str] | list[int]:
    """Check the options before a model is loaded; return the prompts (or class labels). ValueError names
    the option: numbers must be finite, the seed of every image within [0, 2^63 - 1], the prompts file a
    readable UTF-8 text file, --out a directory that can be written (created if missing)."""
    for name, value in (("--cfg", args.cfg), ("--top-p", args.top_p), ("--temperature", args.temperature)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    prompts = read_prompts(args)
    count = len(prompts) * args.num_images
    if not 0 <= args.seed <= MAX_SEED - (count - 1):
        raise ValueError(f"--seed must be in [0, {MAX_SEED - (count - 1)}] (image i uses seed + i), got {args.seed}")
    args.sampling_config()  # the sampler's own range checks
    check_writable(args.out)
    return prompts


def check_writable(out: Path) -> None:
    """--out must be a directory we can write into; it is created when missing."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory: pass a directory for the images")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out} cannot be created ({error.strerror or error}): pass a writable directory") \
            from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable: pass a directory you can write into")


def read_prompts(args: SampleArgs) -> list[str] | list[int]:
    """--class-label values, or --prompt values then the lines of --prompts-file (UTF-8, a byte-order mark
    dropped; --scale-prompt alone: one image per --num-images); ValueError when there are none, both kinds,
    or the file cannot be read."""
    if args.class_label:
        if args.prompt or args.prompts_file is not None:
            raise ValueError("pass either --class-label (class-conditional pipeline) or --prompt, not both")
        return list(args.class_label)
    prompts = list(args.prompt)
    if not prompts and args.prompts_file is None and args.editing.scale_prompt:
        return [args.editing.scale_prompt[-1]]  # names the files; the loop takes every scale's prompt
    if args.prompts_file is not None:
        path = args.prompts_file
        if not path.is_file():
            raise ValueError(f"--prompts-file {path} does not exist or is not a regular file")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"--prompts-file {path} is not UTF-8 text (byte {error.start}): save it as UTF-8") \
                from None
        except OSError as error:
            raise ValueError(f"--prompts-file {path} cannot be read ({error.strerror or error})") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError('no prompt given: pass --prompt "TEXT" (repeatable), --prompts-file FILE or, for a '
                         "class-conditional pipeline, --class-label N")
    return prompts


def open_pipeline(args: SampleArgs) -> Pipeline:
    """load_pipeline with its errors (missing checkpoint, parts that do not fit) as one ValueError."""
    try:
        return load_pipeline(args.checkpoint, resolve_device(args.device), DTYPES[args.dtype], adapter=args.adapter,
                             adapter_scale=args.adapter_scale, decoder_dtype=args.decoder_dtype)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"cannot load the checkpoint: {error}") from error


def sample_jobs(args: SampleArgs, pipeline: Pipeline, jobs: list[str] | list[int], config: SamplingConfig
                ) -> tuple[list[Path], torch.Tensor | None]:
    """Text (or class label) to image for every job, in batches: the written paths and, when a grid is
    wanted, the images (None with --no-grid, so that large runs do not keep every image in memory)."""
    images, written = [], []
    for start in range(0, len(jobs), args.batch_size):
        batch = jobs[start : start + args.batch_size]
        seeds = [args.seed + index for index in range(start, start + len(batch))]
        result = generate(
            pipeline, batch, seeds, config, progress=args.progress,
            return_progression=args.save_progression,
        )
        stems = [image_stem(index, f"class {prompt}" if isinstance(prompt, int) else prompt)
                 for index, prompt in enumerate(batch, start)]
        written += save_images(result.images, stems, args.out)
        if result.progression is not None:
            for row, stem in enumerate(stems):
                written += save_progression([frame[row] for frame in result.progression], stem, args.out)
        if args.grid and start < args.grid_max:
            images.append(result.images[: args.grid_max - start])
    return written, torch.cat(images) if images else None


def check_condition_kind(args: SampleArgs, pipeline: Pipeline) -> None:
    """--class-label for class-conditional checkpoints, prompts for text ones: one-line errors otherwise."""
    num_classes = pipeline.transformer.config.num_classes
    if num_classes and not args.class_label:
        raise ValueError(f"this checkpoint is class-conditional: pass --class-label N (0..{num_classes - 1})")
    if args.class_label and not num_classes:
        raise ValueError("this checkpoint is text-conditioned: pass --prompt TEXT, not --class-label")
    if not all(0 <= label < num_classes for label in args.class_label):
        raise ValueError(f"--class-label must be in [0, {num_classes}), got {list(args.class_label)}")


def main(args: SampleArgs) -> list[Path]:
    """Generate `num_images` per prompt, write PNGs, grid.png and (optionally) progressions; return the paths."""
    prompts = validate(args)
    edits = args.editing != EditArgs() or args.zooming != ZoomArgs()  # a plain run checks no editing option
    if edits:
        check_edit_args(args.editing, args.zooming)
    if args.save_progression and (args.editing.editing or args.editing.mixing or args.zooming.zoom):
        fail("--save-progression is for plain text-to-image sampling: drop it for edits, per-scale "
                          "prompts and zooms")
    if args.class_label and (args.editing.editing or args.editing.mixing or args.zooming.zoom):
        fail("editing, per-scale prompts and zoom take text prompts: drop --class-label")
    pipeline = open_pipeline(args)
    check_condition_kind(args, pipeline)
    if args.compile:
        pipeline.transformer.compile_blocks()
    if edits:
        check_edit_args(args.editing, args.zooming, pipeline.transformer.config.num_scales)
    config = args.sampling_config(pipeline.recommended)
    note = settings_note(args, pipeline.recommended, config)
    if note:
        print(note)
    if args.zooming.zoom:
        written = run_zoom(args.zooming, pipeline, prompts, args.num_images, args.seed, config, args.out,
                           args.progress)
        print(f"wrote a zoom of {len(prompts)} levels to {args.out}/")
        for path in written:
            print(f"  {path}")
        return written
    jobs = [prompt for prompt in prompts for _ in range(args.num_images)]
    if args.editing.editing or args.editing.mixing:
        written, images = run_edits(args.editing, pipeline, jobs, args.seed, config, args.batch_size, args.out,
                                    args.progress)
    else:
        written, images = sample_jobs(args, pipeline, jobs, config)
    grid_note = ""
    if args.grid and images is not None:
        shown = images[: args.grid_max]
        written.append(save_grid(shown, args.out / "grid.png", columns=grid_columns(len(shown), args.num_images)))
        grid_note = f" (grid: {args.out / 'grid.png'}"
        grid_note += f", the first {len(shown)} of {len(jobs)}; --grid-max N for more)" if len(shown) < len(jobs) \
            else ")"
    print(f"wrote {len(jobs)} images for {len(prompts)} prompts to {args.out}/{grid_note}")
    for path in written:
        print(f"  {path}")
    return written


def cli() -> None:
    """The `nextscale-sample` console script: mistakes end with one `error: ...` line (exit 2; --debug shows
    the traceback). The editing, per-scale prompt and zoom options are parsed only when one is given
    (`args_class`)."""
    argv = sys.argv[1:]
    run_cli(args_class(argv), main, argv)


if __name__ == "__main__":
    cli()
