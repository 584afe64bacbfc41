"""One loader interface over three sources: synthetic portraits, an image folder, WebDataset shards.

Every source yields the same item: `{"image": (3, S, S) float in [-1, 1], "caption": str,
"attributes": dict[str, str]}` (attributes are empty outside the synthetic source), and `collate` turns
a list of items into `{"image": (b, 3, S, S), "caption": list[str], "attributes": list[dict]}`.

Bad input never crashes a run and never hangs it. A file that is empty, not an image, truncated,
corrupt or a decompression bomb is skipped, counted by reason in a `BadInputTracker` and named in a
(rate-limited) warning; in the image folder the item of a bad index is the next readable image after
it, so batches keep their size. Once a process has tried enough inputs (`bad_check_after`, or the whole
folder if it is smaller; WebDataset also checks at the end of each pass) and more than
`max_bad_fraction` of them were bad, it raises `TooManyBadFiles`, naming the counts and how to
tolerate them.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from train.synthetic import SyntheticConfig, SyntheticPortraits

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Decoders tried on every file, whatever its name says: only these three, because PIL's other plugins
# (EPS through Ghostscript, among others) are attack surface that a training set never needs.
_FORMATS = ("JPEG", "PNG", "WEBP")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_SOURCES = ("synthetic", "folder", "webdataset")


@dataclass(frozen=True)
class DataConfig:
    """Where training images and captions come from and how they are decoded."""

    source: Literal["synthetic", "folder", "webdataset"] = "synthetic"
    """Built-in synthetic portraits (offline default), an image folder, or WebDataset tar shards."""
    path: str | None = None
    """Image folder root, or a shard pattern such as "data/{00000..00099}.tar" (unused for synthetic)."""
    image_size: int = 64
    """Side of the square training images: shorter side resized to it, then cropped."""
    random_crop: bool = False
    """Crop at a random position along the longer side instead of the centre."""
    synthetic_length: int = 50_000
    """Number of synthetic portraits per epoch."""
    seed: int = 0
    """Synthetic data seed (0 train, 1 held-out evaluation) and seed of WebDataset shuffling."""
    max_bad_fraction: float = 0.01
    """Abort when more than this fraction of the inputs tried were unreadable (they are skipped)."""
    bad_check_after: int = 100
    """Inputs a process tries before it applies `max_bad_fraction` (so one early bad file is no verdict)."""
    max_image_pixels: int = 40_000_000
    """Skip images declaring more pixels (decompression bombs). PIL's own limit still applies on top:
    it refuses images above 2 * PIL.Image.MAX_IMAGE_PIXELS (~179 MP) before we see them."""
    shuffle_buffer: int = 1000
    """WebDataset: samples held in the in-memory shuffle buffer."""
    shard_by_process: bool = False
    """WebDataset: give each distributed process its own shards. Leave False when the loader goes
    through `accelerator.prepare`, which already dispatches or shards the batches across processes."""

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {self.source!r}")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source={self.source!r} needs a path (an image folder or a shard pattern)")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction is a fraction in [0, 1], got {self.max_bad_fraction}")


class TooManyBadFiles(RuntimeError):
    """More than `max_bad_fraction` of the inputs tried were unreadable."""


class BadInput(Exception):
    """One unreadable input; `reason` is a short category used for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class BadInputTracker:
    """Counts inputs tried and bad inputs by reason; warns (rate-limited) and aborts past the threshold.

    Each DataLoader worker holds its own copy, so counts are per process; the threshold is a fraction,
    so it means the same in every worker.
    """

    max_bad_fraction: float
    min_attempts: int = 100
    max_warnings: int = 20
    attempts: int = 0
    counts: Counter = field(default_factory=Counter)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def record_good(self) -> None:
        self.attempts += 1
        self.check()

    def record_bad(self, name: str, reason: str, detail: str = "") -> None:
        self.attempts += 1
        self.counts[reason] += 1
        self._warn(name, reason, detail)
        self.check()

    def _warn(self, name: str, reason: str, detail: str) -> None:
        # A broken shard can hold thousands of bad files: name the first few, then summarise at 10^k.
        bad = self.bad
        if bad <= self.max_warnings:
            logger.warning("skipping bad input %s (%s): %s", name, reason, detail)
            if bad == self.max_warnings:
                logger.warning("further bad inputs are counted without a warning each; summaries at 10^k")
        elif str(bad).rstrip("0") == "1":  # 100, 1000, ...
            logger.warning("bad inputs so far: %s", self.summary())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"{self.bad} of {self.attempts} inputs skipped ({reasons})"

    def check(self, final: bool = False) -> None:
        """Raise TooManyBadFiles past the threshold, once `min_attempts` were tried (or always if `final`)."""
        if not self.attempts or not (final or self.attempts >= self.min_attempts):
            return
        if self.bad / self.attempts > self.max_bad_fraction:
            bombs = self.counts["decompression_bomb"]
            large = " (or raise max_image_pixels, if they are genuine large photos)" if bombs else ""
            raise TooManyBadFiles(
                f"{self.summary()}: {self.bad / self.attempts:.1%} is above max_bad_fraction="
                f"{self.max_bad_fraction}. Fix or remove the files named in the warnings above, or raise "
                f"max_bad_fraction in the data config to tolerate them{large}."
            )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white, 16-bit grey scaled (not clipped) to 8 bit."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, image_size: int, random_crop: bool = False,
                 max_image_pixels: int = 40_000_000) -> torch.Tensor:
    """Encoded JPEG/PNG/WebP bytes -> (3, image_size, image_size) float in [-1, 1], or raise BadInput.

    EXIF orientation is applied; the shorter side is resized to `image_size` (bicubic, antialiased)
    and the square is cropped at the centre or, with `random_crop`, at a position drawn from torch's
    default generator (which DataLoader seeds in every worker).
    """
    if not data:
        raise BadInput("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; we apply `max_image_pixels` ourselves instead of
            # changing PIL.Image.MAX_IMAGE_PIXELS for the whole process.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        with image:
            width, height = image.size
            if width * height > max_image_pixels:
                raise BadInput("decompression_bomb",
                               f"{width}x{height} pixels, over max_image_pixels={max_image_pixels}")
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale, still >= target
            image.load()  # inside the try: truncated data fails here (PIL's LOAD_TRUNCATED_IMAGES stays off)
            image = _to_rgb(ImageOps.exif_transpose(image))
    except BadInput:
        raise
    except Image.DecompressionBombError as error:
        raise BadInput("decompression_bomb", str(error)) from None
    except UnidentifiedImageError:
        raise BadInput("not_an_image", "not a JPEG, PNG or WebP file") from None
    except OSError as error:
        raise BadInput("truncated" if "truncated" in str(error) else "corrupt", str(error)) from None
    except Exception as error:  # decoders fed hostile bytes raise anything (SyntaxError, ValueError, ...)
        raise BadInput("corrupt", f"{type(error).__name__}: {error}") from None

    width, height = image.size
    side = min(width, height)
    if random_crop:
        left = int(torch.randint(0, width - side + 1, ()))
        top = int(torch.randint(0, height - side + 1, ()))
    else:
        left, top = (width - side) // 2, (height - side) // 2
    # Resizing straight from the crop box: one resampling pass, antialiased when shrinking.
    box = (left, top, left + side, top + side)
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (S, S, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1  # (3, S, S)


def _read_metadata(root: Path, metadata_files: list[Path]) -> dict[str, str]:
    """Captions from `metadata.jsonl` files (HF imagefolder): path relative to root (posix) -> text.

    `file_name` is relative to the folder holding the metadata file; the caption is `text` (or
    `caption`).
    """
    captions: dict[str, str] = {}
    for metadata in metadata_files:
        base = metadata.parent.relative_to(root)
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = record["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{metadata}:{number}: expected a JSON object with file_name and text, got {line[:80]!r}"
                ) from error
            captions[(base / name).as_posix()] = str(record.get("text", record.get("caption", "")))
    return captions


class ImageFolderDataset(Dataset):
    """Images found recursively under a folder (jpg/jpeg/png/webp, any case), with captions.

    Captions come from `metadata.jsonl` files (`file_name`, `text`) or a sidecar `.txt` next to the
    image (same stem); an image with neither gets "" (it trains the unconditional branch). Hidden files
    and folders are ignored, symlinked folders are not followed (symlinked files are). A bad file's
    index yields the next readable image after it (see the module docstring).
    """

    def __init__(self, config: DataConfig) -> None:
        assert config.path is not None
        self.config = config
        self.root = Path(config.path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a directory")
        files, texts, metadata_files = [], set(), []
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            relative = Path(folder).relative_to(self.root)
            for name in sorted(names):
                if name.startswith("."):
                    continue
                suffix = os.path.splitext(name)[1].lower()
                if suffix in IMAGE_SUFFIXES:
                    files.append((relative / name).as_posix())
                elif suffix == ".txt":
                    texts.add((relative / name).as_posix())
                elif name == "metadata.jsonl":
                    metadata_files.append(Path(folder) / name)
        if not files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {self.root}")
        self.files: list[str] = files
        self.captions = _read_metadata(self.root, metadata_files)
        sidecars = {f: os.path.splitext(f)[0] + ".txt" for f in files if f not in self.captions}
        self.sidecars = {f: t for f, t in sidecars.items() if t in texts}
        uncaptioned = sum(f not in self.captions and f not in self.sidecars for f in files)
        if uncaptioned:
            logger.warning("%d of %d images under %s have no caption (metadata.jsonl or sidecar .txt); "
                           "they get the empty caption", uncaptioned, len(files), self.root)
        # Counts are of distinct files (a file met again next epoch is not counted again), so the bad
        # fraction is the folder's, and a bad file is decoded and reported once.
        self.tracker = BadInputTracker(config.max_bad_fraction, config.bad_check_after)
        self._seen = np.zeros(len(files), dtype=bool)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, index: int) -> str:
        name = self.files[index]
        if name in self.captions:
            return self.captions[name]
        if name in self.sidecars:
            try:
                return (self.root / self.sidecars[name]).read_text(encoding="utf-8", errors="replace").strip()
            except OSError as error:
                logger.warning("cannot read caption %s (%s); using the empty caption", self.sidecars[name],
                               error)
        return ""

    def _load(self, index: int) -> dict:
        try:
            data = (self.root / self.files[index]).read_bytes()
        except OSError as error:
            raise BadInput("unreadable", str(error)) from None
        config = self.config
        image = decode_image(data, config.image_size, config.random_crop, config.max_image_pixels)
        return {"image": image, "caption": self.caption(index), "attributes": {}}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} images")
        # A small folder is judged once this reader has tried its share of it (about an epoch).
        info = get_worker_info()
        share = math.ceil(len(self.files) / (info.num_workers if info is not None else 1))
        self.tracker.min_attempts = min(self.config.bad_check_after, share)
        for offset in range(len(self.files)):
            current = (index + offset) % len(self.files)
            if current in self._bad:
                continue
            first_time, self._seen[current] = not self._seen[current], True
            try:
                item = self._load(current)
            except BadInput as error:
                self._bad.add(current)
                self.tracker.record_bad(str(self.root / self.files[current]), error.reason, error.detail)
                continue
            if first_time:
                self.tracker.record_good()
            return {**item, "index": current}
        self.tracker.check(final=True)
        raise TooManyBadFiles(f"no readable image under {self.root}: {self.tracker.summary()}")


def _import_webdataset() -> Any:
    try:
        import webdataset
    except ImportError as error:
        raise ImportError(
            "source='webdataset' needs the optional webdataset package: pip install 'nextscale[data]' "
            "(or pip install webdataset)"
        ) from error
    return webdataset


def _process_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class WebDatasetShards(IterableDataset):
    """Samples from WebDataset tar shards: an image (jpg/jpeg/png/webp) plus `txt` or `json` caption.

    Shards are split across DataLoader workers (and, with `shard_by_process`, across processes); with
    fewer shards than readers every reader reads every shard and keeps one sample in `readers`. With
    `shuffle`, the shard order changes every pass (the same permutation in every reader) and samples go
    through a shuffle buffer. A pass ends when the assigned shards are exhausted.
    """

    def __init__(self, config: DataConfig, shuffle: bool = False) -> None:
        assert config.path is not None
        self.config = config
        self.shuffle = shuffle
        self.urls: list[str] = list(_import_webdataset().shardlists.expand_urls(config.path))
        self.tracker = BadInputTracker(config.max_bad_fraction, config.bad_check_after)
        self._passes = 0  # per reader; persists across epochs with persistent DataLoader workers
        self._missing_captions = 0

    def _on_shard_error(self, error: Exception) -> bool:
        """webdataset's handler for an unreadable shard or tar member: count, warn, go on with the next."""
        # webdataset appends the stream and url to the exception's args
        url = next((arg for arg in reversed(error.args[1:]) if isinstance(arg, str)), "shard")
        detail = str(error) if isinstance(error, OSError) or not error.args else str(error.args[0])
        self.tracker.record_bad(url, "bad_shard", f"{type(error).__name__}: {detail}")
        return True

    def _item(self, sample: dict[str, Any]) -> dict | None:
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        try:
            if key is None:
                members = sorted(k for k in sample if not k.startswith("__"))
                raise BadInput("missing_image", f"no jpg/jpeg/png/webp member among {members}")
            image = decode_image(sample[key], self.config.image_size, self.config.random_crop,
                                 self.config.max_image_pixels)
        except BadInput as error:
            self.tracker.record_bad(name, error.reason, error.detail)
            return None
        self.tracker.record_good()
        return {"image": image, "caption": self._caption(sample, name), "attributes": {}}

    def _caption(self, sample: dict[str, Any], name: str) -> str:
        if "txt" in sample:
            return sample["txt"].decode("utf-8", errors="replace").strip()
        if "json" in sample:
            try:
                record = json.loads(sample["json"])
                return str(record.get("text", record.get("caption", "")))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                pass
        self._missing_captions += 1
        if self._missing_captions == 1:
            logger.warning("sample %s has no txt or json caption; such samples get the empty caption", name)
        return ""

    def __iter__(self) -> Iterator[dict]:
        wds = _import_webdataset()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _process_rank() if self.config.shard_by_process else (0, 1)
        reader, readers = rank * workers + worker, world * workers
        urls = list(self.urls)
        if self.shuffle:
            np.random.default_rng([self.config.seed, self._passes]).shuffle(urls)
        if len(urls) >= readers:
            urls, keep = urls[reader::readers], slice(None)
        else:
            keep = slice(reader, None, readers)
        samples = wds.tarfile_to_samples(handler=self._on_shard_error)(iter([{"url": url} for url in urls]))
        samples = itertools.islice(samples, keep.start, None, keep.step)
        if self.shuffle:
            seed = f"{self.config.seed}-{self._passes}-{reader}"
            buffer = self.config.shuffle_buffer
            samples = wds.shuffle(buffer, min(100, buffer), seed=seed)(samples)
        self._passes += 1
        for sample in samples:
            item = self._item(sample)
            if item is not None:
                yield item
        self.tracker.check(final=True)


HELD_OUT_SEED_OFFSET = 1_000_003


def held_out(config: DataConfig) -> DataConfig:
    """The held-out counterpart of a data config: synthetic portraits of another seed; other sources
    have no built-in split, so the same data (evaluate on a separate folder for a true hold-out)."""
    if config.source == "synthetic":
        return replace(config, seed=config.seed + HELD_OUT_SEED_OFFSET)
    return config


def build_dataset(config: DataConfig, shuffle: bool = False) -> Dataset:
    """The dataset of `config.source`; `shuffle` matters only to WebDataset (map-style sources are
    shuffled by the DataLoader's sampler)."""
    if config.source == "synthetic":
        return SyntheticPortraits(SyntheticConfig(size=config.image_size, seed=config.seed,
                                                  length=config.synthetic_length))
    if config.source == "folder":
        return ImageFolderDataset(config)
    return WebDatasetShards(config, shuffle=shuffle)


def collate(batch: Sequence[dict]) -> dict:
    """Items -> {"image": (b, 3, S, S), "caption": list[str], "attributes": list[dict], "index": (b,) long}.

    `index` is each image's position in a map-style source (-1 for WebDataset streams, which have none);
    per-image caches such as precomputed teacher features are keyed by it.
    """
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "attributes": [item["attributes"] for item in batch],
        "index": torch.tensor([item.get("index", -1) for item in batch], dtype=torch.long),
    }


def make_dataloader(config: DataConfig, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    drop_last: bool = True, generator: torch.Generator | None = None) -> DataLoader:
    """A standard DataLoader over `build_dataset(config)` (ready for `accelerator.prepare`).

    Workers are persistent so that bad-input counts and WebDataset pass counters survive epochs.
    """
    dataset = build_dataset(config, shuffle=shuffle)
    iterable = isinstance(dataset, IterableDataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not iterable,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
