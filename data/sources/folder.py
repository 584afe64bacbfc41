"""`--data.source folder`: images found recursively under a folder, captions from metadata.jsonl or .txt."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nextscale.data.badinput import BadInput, BadInputTracker, TooManyBadFiles
from nextscale.data.config import DataConfig
from nextscale.data.decode import IMAGE_SUFFIXES, crop_seed, decode_image, read_regular_file
from nextscale.data.sources import Source, record_caption, register_source

logger = logging.getLogger(__name__)


def _read_metadata(root: Path, metadata_files: list[Path], tracker: BadInputTracker) -> dict[str, str]:
    """Captions from `metadata.jsonl` files (HF imagefolder): path relative to root (posix) -> text.

    `file_name` is relative to the folder holding the metadata file; the caption is `text` (or
    `caption`). A malformed line, or one whose caption is not a string (`record_caption`), is skipped and
    counted in `tracker` like a bad image (`bad_metadata`).
    """
    captions: dict[str, str] = {}
    for metadata in metadata_files:
        base = metadata.parent.relative_to(root)
        try:
            text = read_regular_file(metadata, 1 << 30).decode("utf-8", errors="replace")
        except BadInput as error:
            tracker.record_bad(str(metadata), error.reason, error.detail)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = record["file_name"]
                if not isinstance(name, str):
                    raise TypeError("file_name is not a string")
                caption = record_caption(record)
            except (json.JSONDecodeError, KeyError, TypeError, BadInput) as error:
                tracker.record_bad(f"{metadata}:{number}", "bad_metadata",
                                   f"expected a JSON object with file_name and text, got {line[:80]!r} "
                                   f"({getattr(error, 'detail', error)})")
                continue
            captions[(base / name).as_posix()] = caption
    return captions


class ImageFolderDataset(Dataset):
    """Images found recursively under a folder (jpg/jpeg/png/webp, any case), with captions.

    Captions come from `metadata.jsonl` files (`file_name`, `text`) or a sidecar `.txt` next to the
    image (same stem); an image with neither gets "" (it trains the unconditional branch). Hidden files
    and folders are ignored, symlinked folders are not followed (symlinked files are, to regular files
    only: FIFOs, devices and sockets are skipped unread). A bad file's index yields the next readable
    image after it, within the part the dataset serves (`restrict_to`).
    """

    captioned = True
    """Whether images are expected to carry captions (a subclass that labels them otherwise sets False)."""

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
        # Counts are of distinct files (a file met again next epoch, or by another worker, is not counted
        # again), so the bad fraction is the folder's, and a bad file is decoded and reported once.
        self.tracker = BadInputTracker(config.max_bad_fraction, config.bad_check_after, items=len(files))
        self.captions = _read_metadata(self.root, metadata_files, self.tracker)
        sidecars = {f: os.path.splitext(f)[0] + ".txt" for f in files if f not in self.captions}
        self.sidecars = {f: t for f, t in sidecars.items() if t in texts}
        uncaptioned = sum(f not in self.captions and f not in self.sidecars for f in files)
        if uncaptioned and self.captioned:
            logger.warning("%d of %d images under %s have no caption (metadata.jsonl or sidecar .txt); "
                           "they get the empty caption", uncaptioned, len(files), self.root)
        self._start_reading()

    def _start_reading(self) -> None:
        """Fresh reading state: the pass over the data (which files were tried is the tracker's), every
        file a member."""
        self._members: np.ndarray | None = None
        # The pass over the data, in shared memory so that persistent DataLoader workers see `set_epoch`:
        # a random crop is drawn from (data seed, pass, index) alone (`crop_seed`).
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def sibling(self) -> ImageFolderDataset:
        """A dataset over the same files and captions, found once, with a pass and bad-file counts of its
        own: the held-out part of a folder, which the training's passes never move (`set_epoch`)."""
        other = copy.copy(self)
        other.tracker = BadInputTracker(self.config.max_bad_fraction, self.config.bad_check_after,
                                        items=len(self.files))
        other._start_reading()
        return other

    def restrict_to(self, indices: list[int]) -> None:
        """Serve only `indices` (this dataset's part of the folder: the training or the held-out part): a bad
        file is replaced by the next readable file of the part, never by one of another part."""
        self._members = np.unique(np.asarray(indices, dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        """The pass over the data that the next items belong to (varies the random crops; the training
        runtime sets it before every pass)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, index: int) -> str:
        name = self.files[index]
        if name in self.captions:
            return self.captions[name]
        if name in self.sidecars:
            try:
                data = read_regular_file(self.root / self.sidecars[name], 1 << 20)
                return data.decode("utf-8", errors="replace").strip()
            except BadInput as error:
                logger.warning("cannot read caption %s (%s); using the empty caption", self.sidecars[name],
                               error)
        return ""

    def _load(self, index: int) -> dict:
        config = self.config
        data = read_regular_file(self.root / self.files[index], config.max_file_bytes)
        crop = crop_seed(config.seed, int(self._epoch), index) if config.random_crop else None
        image = decode_image(data, config.image_size, crop, config.max_image_pixels)
        return {"image": image, "caption": self.caption(index)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} images")
        members = self._members if self._members is not None else np.arange(len(self.files))
        # A small folder is judged once its readers together have tried it (about an epoch).
        self.tracker.min_attempts = min(self.config.bad_check_after, len(members))
        start = int(np.searchsorted(members, index))
        for offset in range(len(members)):
            current = int(members[(start + offset) % len(members)])
            if self.tracker.is_bad(current):
                continue
            try:
                item = self._load(current)
            except BadInput as error:
                self.tracker.record_bad(str(self.root / self.files[current]), error.reason, error.detail,
                                        item=current)
                continue
            self.tracker.record_good(item=current)
            return {**item, "index": current}
        self.tracker.check(final=True)
        raise TooManyBadFiles(f"no readable image under {self.root}: {self.tracker.summary()}")




register_source(Source("folder", lambda config, shuffle: ImageFolderDataset(config)))
