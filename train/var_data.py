"""Training data of the transformer: token codes + text embeddings, precomputed once or made on the fly.

Encoding images with the frozen tokenizer and captions with the frozen text encoder is the same work
every epoch, so by default both are computed once into a cache directory:

    cache_dir/codes.safetensors   codes (n, L) int16, caption_index (n,) int64 + a fingerprint
                                  (+ detail_index, layout_index (n,) int64 with mixing captions)
    cache_dir/text.safetensors    text_tokens (D, t, d) fp16, text_mask, text_pooled + the D distinct captions

Captions repeat (a folder of 20,000 images may have 40 distinct captions), so the text states of each
distinct caption are stored once and every item points at its row: the text file grows with D, not n.
With `mixing=True` (mixing regularisation, `--mixing`) every item also gets a detail caption
(`captions.detail_caption`: its fine attributes, coarse ones stated wrongly) and a layout caption
(`captions.layout_caption`: its coarse attributes, detail ones stated wrongly), stored the same way;
this needs a source whose items carry their attributes (the synthetic portraits).

A cache is reused only when its fingerprint matches (same tokenizer weights, data config and text
encoder), so changing any of them rebuilds it instead of silently training on stale codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from nextscale.checkpoint import WEIGHTS_NAME, resolve_model_dir
from nextscale.data import DataConfig, loader_over, no_items
from nextscale.portraits.captions import detail_caption, layout_caption
from nextscale.scales import flatten_codes
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer.text import TextEncoder, load_text_cache, precompute_text_embeddings, save_text_cache

CODES_FILE = "codes.safetensors"
TEXT_FILE = "text.safetensors"
CACHE_FORMAT = 2
"""Bumped when the cache layout changes (2: de-duplicated captions), so older caches are rebuilt."""
MIXING_KINDS = ("detail", "layout")
"""The mixing captions of an item, each stored as `<kind>_index` and served as `<kind>_text_*`."""


def cache_fingerprint(tokenizer_path: str, data: DataConfig, text_encoder: str, max_length: int, count: int,
                      subset: int | None = None, mixing: bool = False) -> str:
    """Hash of everything the cached codes and embeddings depend on (`subset`: how many items of the
    source are trained on, when the rest is held out; `mixing`: mixing captions included)."""
    weights = resolve_model_dir(tokenizer_path) / WEIGHTS_NAME
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    fields = dataclasses.asdict(data)
    if not data.concepts and data.concept_items is None:  # so caches of the ordinary world keep their fingerprint
        fields = {k: v for k, v in fields.items() if k not in ("concepts", "concept_items")}
    payload = {"tokenizer": digest.hexdigest(), "data": fields, "text_encoder": text_encoder,
               "max_length": max_length, "count": count, "subset": subset, "format": CACHE_FORMAT}
    if mixing:  # absent otherwise, so caches without mixing captions keep their fingerprint
        payload["mixing_captions"] = list(MIXING_KINDS)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_fingerprint(cache_dir: Path) -> str | None:
    path = cache_dir / CODES_FILE
    if not path.is_file() or not (cache_dir / TEXT_FILE).is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("fingerprint")


def mixing_captions(batch: dict, seed: int) -> dict[str, list[str]]:
    """The mixing captions of each item of a collated batch, by kind (`MIXING_KINDS`): detail
    (`captions.detail_caption`) and layout (`captions.layout_caption`), drawn from (seed, item index) so
    a rebuilt cache gets the same ones."""
    if "attributes" not in batch or not all(batch["attributes"]) or bool((batch["index"] < 0).any()):
        raise ValueError("--mixing needs detail captions, made from each item's attributes: use a source whose "
                         "items carry them (--data.source synthetic), or --mixing 0")
    mixing_stream = 0x6D6978  # "mix": a random stream apart from the one the item's own caption is drawn from
    items = list(zip(batch["attributes"], batch["index"], batch.get("zoom", [1] * len(batch["index"]))))
    return {
        "detail": [detail_caption(attributes, np.random.default_rng([seed, int(index), mixing_stream]), int(zoom))
                   for attributes, index, zoom in items],
        "layout": [layout_caption(attributes, np.random.default_rng([seed, int(index), mixing_stream, 1]), int(zoom))
                   for attributes, index, zoom in items],
    }


@torch.no_grad()
def encode_dataset(
    tokenizer: MultiScaleVQVAE, dataset: Dataset, count: int, batch_size: int = 128, progress: bool = True,
    mixing_seed: int | None = None,
) -> tuple[torch.Tensor, list[str], dict[str, list[str]]]:
    """Codes (n, L) int16, captions and (with `mixing_seed`) the mixing captions by kind of the first
    `count` items of a dataset of source items (n <= count: all of a smaller dataset, whose size is then
    the progress bar's total)."""
    loader = loader_over(dataset, batch_size=batch_size, shuffle=False, num_workers=0, drop_last=False)
    codes, captions = [], []
    mixing: dict[str, list[str]] = {kind: [] for kind in MIXING_KINDS} if mixing_seed is not None else {}
    total = min(count, len(dataset)) if hasattr(dataset, "__len__") else count  # a stream: at most `count`
    bar = tqdm(total=total, desc="encoding images", disable=not progress, unit="img")
    for batch in loader:
        take = min(len(batch["caption"]), count - len(captions))
        codes.append(flatten_codes(tokenizer.encode(batch["image"][:take])).to(torch.int16))
        captions.extend(batch["caption"][:take])
        if mixing_seed is not None:
            for kind, more in mixing_captions(batch, mixing_seed).items():
                mixing[kind].extend(more[:take])
        bar.update(take)
        if len(captions) >= count:
            break
    bar.close()
    if not codes:
        raise no_items(dataset)
    return torch.cat(codes), captions, mixing


def build_cache(
    cache_dir: str | os.PathLike,
    tokenizer: MultiScaleVQVAE,
    tokenizer_path: str,
    text_encoder: TextEncoder,
    data: DataConfig,
    dataset: Dataset,
    count: int,
    progress: bool = True,
    mixing: bool = False,
) -> Path:
    """Encode the first `count` items of `dataset` (drawn from `data`, minus any held-out part) and their
    captions (and, with `mixing`, mixing captions) into `cache_dir` unless a matching cache is there."""
    cache_dir = Path(cache_dir)
    subset = len(dataset) if isinstance(dataset, Subset) else None
    fingerprint = cache_fingerprint(tokenizer_path, data, text_encoder.config.name_or_path,
                                    text_encoder.max_length, count, subset, mixing)
    if read_fingerprint(cache_dir) == fingerprint:
        return cache_dir
    if tokenizer.config.vocab_size > 2**15:
        raise ValueError("codes are cached as int16: vocab_size must be <= 32768")
    codes, captions, extra = encode_dataset(tokenizer, dataset, count, progress=progress,
                                            mixing_seed=data.seed if mixing else None)
    distinct, index = deduplicate(captions + [caption for kind in extra for caption in extra[kind]])
    tensors = {"codes": codes.contiguous(), "caption_index": index[:len(captions)].contiguous()}
    for position, kind in enumerate(extra):
        start = len(captions) * (1 + position)
        tensors[f"{kind}_index"] = index[start:start + len(captions)].contiguous()
    embeddings = precompute_text_embeddings(text_encoder, distinct, batch_size=256, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_text_cache(cache_dir / TEXT_FILE, embeddings, distinct)
    temporary = cache_dir / f".{CODES_FILE}.tmp-{os.getpid()}"
    save_file(tensors, str(temporary), metadata={"fingerprint": fingerprint})
    os.replace(temporary, cache_dir / CODES_FILE)
    if progress:
        print(describe_cache(cache_dir, len(captions), len(distinct)))
    return cache_dir


def deduplicate(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """(the distinct captions in order of first appearance, index (n,) int64 of each caption among them)."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(caption, len(rows)) for caption in captions]
    return list(rows), torch.tensor(index, dtype=torch.int64)


def describe_cache(cache_dir: Path, items: int, distinct: int) -> str:
    """One line: items, distinct captions and the size of each file of the cache."""
    codes_mb = (cache_dir / CODES_FILE).stat().st_size / 1e6
    text_mb = (cache_dir / TEXT_FILE).stat().st_size / 1e6
    return (f"cache {cache_dir}: {items} items, {distinct} distinct captions; codes {codes_mb:.1f} MB, "
            f"text states {text_mb:.1f} MB")


class CachedCodesDataset(Dataset):
    """Items {"codes": (L,) long, "text_tokens": (t, d), "text_mask": (t,), "text_pooled": (d,)}, and each
    mixing caption's states as "<kind>_text_tokens", "<kind>_text_mask", "<kind>_text_pooled" (kind:
    detail, layout) when the cache holds mixing captions."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        cache_dir = Path(cache_dir)
        with safe_open(str(cache_dir / CODES_FILE), framework="pt") as handle:
            self.codes = handle.get_tensor("codes")
            self.caption_index = handle.get_tensor("caption_index")
            self.mixing_index = {kind: handle.get_tensor(f"{kind}_index") for kind in MIXING_KINDS
                                 if f"{kind}_index" in handle.keys()}
        # fp16 in memory (half the RAM); cast to fp32 per batch in the training step
        self.text, self.captions = load_text_cache(cache_dir / TEXT_FILE, dtype=torch.float16)
        if len(self.caption_index) != len(self.codes):
            raise ValueError(f"{cache_dir}: {len(self.codes)} code rows but {len(self.caption_index)} caption indices")
        for index in (self.caption_index, *self.mixing_index.values()):
            if len(index) and not 0 <= int(index.min()) <= int(index.max()) < len(self.captions):
                raise ValueError(f"{cache_dir}: caption indices outside the {len(self.captions)} cached captions")

    def __len__(self) -> int:
        return len(self.codes)

    def caption(self, index: int) -> str:
        """The caption of item `index`."""
        return self.captions[int(self.caption_index[index])]

    @property
    def has_mixing(self) -> bool:
        """Whether the cache holds the mixing captions of every item (built for `--mixing`)."""
        return set(self.mixing_index) == set(MIXING_KINDS)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.caption_index[index])
        item = {"codes": self.codes[index].long(), **{k: v[row] for k, v in self.text.items()}}
        for kind, rows in self.mixing_index.items():
            item.update({f"{kind}_{k}": v[int(rows[index])] for k, v in self.text.items()})
        return item


def on_the_fly_class_batches(loader, tokenizer: MultiScaleVQVAE) -> Iterator[dict[str, torch.Tensor]]:
    """Encode image batches as they come, with their class labels (the `class-folder` source)."""
    for batch in loader:
        if "label" not in batch:
            raise ValueError("a class-conditional transformer needs class labels: use --data.source class-folder")
        codes = flatten_codes(tokenizer.encode(batch["image"].to(next(tokenizer.parameters()).device)))
        yield {"codes": codes, "labels": batch["label"]}


def on_the_fly_batches(
    loader, tokenizer: MultiScaleVQVAE, text_encoder: TextEncoder
) -> Iterator[dict[str, torch.Tensor]]:
    """Encode image batches and captions as they come (for sources too large to cache)."""
    for batch in loader:
        codes = flatten_codes(tokenizer.encode(batch["image"].to(next(tokenizer.parameters()).device)))
        yield {"codes": codes, **text_encoder.encode(batch["caption"]).as_dict()}
