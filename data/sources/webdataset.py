"""`--data.source webdataset`: samples streamed from WebDataset tar shards (an image plus txt/json caption)."""

from __future__ import annotations

import itertools
import json
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from nextscale.data.badinput import BadInput, BadInputTracker
from nextscale.data.config import DataConfig
from nextscale.data.decode import crop_seed, decode_image
from nextscale.data.sources import Source, record_caption, register_source

logger = logging.getLogger(__name__)


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
        self.samples_per_shard: dict[str, int] = {}
        """Readable samples of each shard in the last pass of this reader."""

    def describe_pass(self) -> str:
        """The shards and their readable samples in the last pass (for the message of an empty pass)."""
        counts = ", ".join(f"{url}: {count}" for url, count in self.samples_per_shard.items()) or "not counted"
        return f"readable samples per shard {counts} ({self.tracker.summary()})"

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
            crop = (crop_seed(self.config.seed, self._passes, zlib.crc32(name.encode()))
                    if self.config.random_crop else None)
            image = decode_image(sample[key], self.config.image_size, crop, self.config.max_image_pixels)
        except BadInput as error:
            self.tracker.record_bad(name, error.reason, error.detail)
            return None
        self.tracker.record_good()
        return {"image": image, "caption": self._caption(sample, name)}

    def _caption(self, sample: dict[str, Any], name: str) -> str:
        if "txt" in sample:
            return sample["txt"].decode("utf-8", errors="replace").strip()
        if "json" in sample:
            try:
                return record_caption(json.loads(sample["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                self.tracker.record_bad(name, "bad_metadata", f"its json is not JSON ({error})")
                return ""
            except BadInput as error:  # the sample trains with the empty caption, counted
                self.tracker.record_bad(name, error.reason, error.detail)
                return ""
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
        self.samples_per_shard = dict.fromkeys(urls, 0)
        for sample in samples:
            item = self._item(sample)
            if item is not None:
                url = sample.get("__url__")
                self.samples_per_shard[url] = self.samples_per_shard.get(url, 0) + 1
                yield item
        empty = [url for url, count in self.samples_per_shard.items() if count == 0]
        if empty and len(urls) >= readers:
            logger.warning("shard(s) with no readable sample: %s", ", ".join(empty))
        self.tracker.check(final=True)



register_source(Source("webdataset", lambda config, shuffle: WebDatasetShards(config, shuffle=shuffle)))
