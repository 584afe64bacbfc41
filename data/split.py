"""Held-out data for the final evaluation of every training: a separate set when given, else a part of the
training data that is then never trained on.

One rule for the whole pipeline: which items are held out depends on the data alone (never on a
training's options such as --eval-images), so the tokenizer and the transformer trained on the same data
hold out the same items, and neither trains on what the other evaluates. `EvaluationSplit.record` is what
both runs write to metrics.json (`held_out_split`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from torch.utils.data import Dataset, IterableDataset, Subset

from nextscale.data import DataConfig, build_dataset, held_out
from nextscale.data.sources import get_source

HELD_OUT_ITEMS = 1024
"""Items held out of a folder (at most a tenth of it): every k-th item, k = total // count."""


@dataclass
class EvaluationSplit:
    """The training items and the held-out items no training on the same data trains on."""

    train: Dataset
    evaluation: Dataset | None
    """None when the data has no part to hold out (the run then reports no held-out metrics)."""
    description: str
    """Where the held-out items come from (written to metrics.json)."""
    held_out_names: tuple[str, ...] = ()
    """The held-out items by name, where they have names (a folder's files, WebDataset shards)."""

    def record(self) -> dict:
        """What metrics.json says about the held-out items: where they come from, how many (when known) and
        a digest of their names, equal for every run that holds out the same items."""
        names = "\n".join(self.held_out_names).encode()
        count = len(self.held_out_names) if self.held_out_names else None
        return {"source": self.description, "items": count,
                "digest": hashlib.sha256(names).hexdigest()[:16] if names else None}


def part(dataset: Dataset, indices: list[int]) -> Subset:
    """The part `indices` of a map-style dataset; a dataset that replaces bad items by others is told its
    part (`restrict_to`), so that two parts never share an item."""
    restrict = getattr(dataset, "restrict_to", None)
    if restrict is not None:
        restrict(indices)
    return Subset(dataset, indices)


def evaluation_split(data: DataConfig, eval_data: DataConfig | None) -> EvaluationSplit:
    """Split off held-out data: `eval_data` when given, else the source's own held-out split (synthetic:
    another seed), else every k-th item of a map-style source (an image or class folder: `HELD_OUT_ITEMS`
    of them, at most a tenth), else the last shard of a WebDataset with several shards."""
    if eval_data is not None:
        return EvaluationSplit(build_dataset(data, shuffle=True), build_dataset(eval_data),
                               f"--eval-data ({eval_data.source} {eval_data.path or ''})".replace(" )", ")"))
    if get_source(data.source).held_out is not None:
        split = held_out(data)
        return EvaluationSplit(build_dataset(data, shuffle=True), build_dataset(split),
                               f"the {data.source} source's held-out split (seed {split.seed})")
    dataset = build_dataset(data, shuffle=True)
    if isinstance(dataset, IterableDataset):
        urls = list(getattr(dataset, "urls", []))
        if len(urls) < 2:
            return EvaluationSplit(dataset, None, "none: one shard, nothing to hold out (pass --eval-data.path DIR)")
        evaluation = build_dataset(data)
        dataset.urls, evaluation.urls = urls[:-1], urls[-1:]
        return EvaluationSplit(dataset, evaluation, f"the last shard {urls[-1]}, never trained on", (urls[-1],))
    total = len(dataset)
    count = min(HELD_OUT_ITEMS, total // 10)
    if count < 1:
        return EvaluationSplit(dataset, None, f"none: {total} items, too few to hold out (pass --eval-data.path DIR)")
    stride = total // count  # every stride-th item: spread over the folder (and over the classes of a class-folder)
    evaluation = list(range(stride - 1, total, stride))[:count]
    held = set(evaluation)
    # the held-out items come from a dataset of their own, so that what the training run does to its dataset
    # (the pass it tells it, which varies random crops) never changes what is evaluated; a folder's sibling
    # shares its file list rather than walking the folder again
    sibling = getattr(dataset, "sibling", None)
    files = getattr(dataset, "files", None)
    return EvaluationSplit(part(dataset, [i for i in range(total) if i not in held]),
                           part(sibling() if sibling is not None else build_dataset(data), evaluation),
                           f"every {stride}th of {total} items of {data.path} ({count}), never trained on",
                           tuple(files[i] for i in evaluation) if files is not None else ())
