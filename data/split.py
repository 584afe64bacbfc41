"""Held-out data for the final evaluation of every training: a separate set when given, else a part of the
training data that is then never trained on."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset, IterableDataset, Subset

from nextscale.data import DataConfig, build_dataset, held_out
from nextscale.data.sources import get_source


@dataclass
class EvaluationSplit:
    """The transformer's training items and the held-out items it never trains on."""

    train: Dataset
    evaluation: Dataset | None
    """None when the data has no part to hold out (the run then reports no held-out metrics)."""
    description: str
    """Where the held-out items come from (written to metrics.json)."""


def evaluation_split(data: DataConfig, eval_data: DataConfig | None, eval_images: int) -> EvaluationSplit:
    """Split off held-out data: `eval_data` when given, else the source's own held-out split (synthetic:
    another seed), else every k-th item of a map-style source (an image or class folder: `eval_images` of
    them, at most a tenth), else the last shard of a WebDataset with several shards."""
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
        return EvaluationSplit(dataset, evaluation, f"the last shard {urls[-1]}, never trained on")
    total = len(dataset)
    count = min(eval_images, total // 10)
    if count < 1:
        return EvaluationSplit(dataset, None, f"none: {total} items, too few to hold out (pass --eval-data.path DIR)")
    stride = total // count  # every stride-th item: spread over the folder (and over the classes of a class-folder)
    evaluation = list(range(stride - 1, total, stride))[:count]
    held = set(evaluation)
    # the held-out items come from a dataset of their own, so that what the training run does to its dataset
    # (the pass it tells it, which varies random crops) never changes what is evaluated; a folder's sibling
    # shares its file list rather than walking the folder again
    sibling = getattr(dataset, "sibling", None)
    return EvaluationSplit(Subset(dataset, [i for i in range(total) if i not in held]),
                           Subset(sibling() if sibling is not None else build_dataset(data), evaluation),
                           f"every {stride}th of {total} items of {data.path} ({count}), never trained on")
