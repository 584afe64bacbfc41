"""A class (label) per image of your own data, for the label judge and label adherence.

Two layouts give labels:

    DIR/<class>/...png                     --data.source class-folder: the sub-folder is the label
    DIR/metadata.jsonl                     --data.source folder: a label column beside the caption,
      {"file_name": "a.png", "text": "a grey cat on a sofa", "label": "cat"}

Classes are the distinct labels in sorted order (a class folder's order, which a class-conditional
transformer trained on the same folder numbers alike). The held-out images are the pipeline's own
(`nextscale.data.split.evaluation_split`: the items no training on the same data trains on), so the judge
never trains on the images that the tokenizer and the transformer were evaluated on, nor is it scored on
images it trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import Dataset, Subset

from nextscale.data import DataConfig
from nextscale.data.split import evaluation_split


@dataclass
class LabelledSplit:
    """The labelled items of a dataset, split as every training on that data splits it."""

    classes: tuple[str, ...]
    """The class names, sorted; a label is an index into them."""
    train: Subset
    """Training items that carry a label."""
    held_out: Subset | None
    """Held-out items that carry a label (None: the data has nothing held out)."""
    labels: dict[int, int]
    """Label of every labelled item, by its index in the source dataset."""
    description: str
    """Where the held-out items come from (`EvaluationSplit.description`)."""

    def label_of(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels (b,) long of the items with these source indices (a batch's "index"); -1 for an item without
        a label (a folder reads the next image in a bad one's place, which may have none)."""
        return torch.tensor([self.labels.get(int(index), -1) for index in indices], dtype=torch.long)

    def captions_by_class(self, part: Subset) -> list[list[str]]:
        """The distinct non-empty captions of each class's items in `part`, in item order."""
        found: list[list[str]] = [[] for _ in self.classes]
        base = part.dataset
        reader = getattr(base, "caption", None)
        for index in part.indices:
            caption = reader(index) if callable(reader) else base[index]["caption"]
            label = self.labels[index]
            if caption and caption not in found[label]:
                found[label].append(caption)
        return found


def folder_labels(root: Path, files: list[str], column: str) -> list[str | None]:
    """The `column` value of each file's line in the metadata.jsonl files under `root` (None where a file
    has none). Lines that are not JSON objects naming a file are skipped (the folder source counts them)."""
    found: dict[str, str] = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        if "metadata.jsonl" not in names:
            continue
        base = Path(folder).relative_to(root)
        for line in (Path(folder) / "metadata.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("file_name"), str) and record.get(column) is not None:
                found[(base / record["file_name"]).as_posix()] = str(record[column])
    return [found.get(PurePosixPath(name).as_posix()) for name in files]


def source_labels(dataset: Dataset, data: DataConfig, column: str) -> list[str | None]:
    """The label name of every item of a class folder or of a folder with a label column."""
    if data.source == "class-folder":
        return [dataset.classes[label] for label in dataset.labels]
    if data.source == "folder":
        return folder_labels(Path(data.path), list(dataset.files), column)
    raise ValueError(f"labels come from a class folder (--data.source class-folder) or from a {column!r} column of "
                     f"a folder's metadata.jsonl (--data.source folder), not from --data.source {data.source}")


def labelled_split(data: DataConfig, column: str = "label") -> LabelledSplit:
    """Split `data` as its trainings do and keep the items that carry a label; ValueError when fewer than
    two classes are found."""
    split = evaluation_split(data, None)
    train = split.train
    if not isinstance(train, Subset):
        raise ValueError(f"{data.path} holds too few images to hold any out ({split.description})")
    names = source_labels(train.dataset, data, column)
    classes = tuple(sorted({name for name in names if name is not None}))
    if len(classes) < 2:
        where = "sub-folders" if data.source == "class-folder" else f"values in the {column!r} column of metadata.jsonl"
        raise ValueError(f"{data.path}: {len(classes)} classes found ({where}); a judge needs at least two")
    number = {name: label for label, name in enumerate(classes)}
    labels = {index: number[name] for index, name in enumerate(names) if name is not None}

    def labelled(part: Subset) -> Subset:
        return Subset(part.dataset, [index for index in part.indices if index in labels])

    held_out = labelled(split.evaluation) if isinstance(split.evaluation, Subset) else None
    return LabelledSplit(classes, labelled(train), held_out, labels, split.description)


def class_prompts(split: LabelledSplit, per_class: int, class_names: bool) -> list[list[str]]:
    """`per_class` prompts for each class: its name (`class_names`, the caption a class folder trains on),
    else its held-out items' captions in turn (its training items' where none are held out; its name
    where it has no caption at all)."""
    if class_names:
        return [[name] * per_class for name in split.classes]
    held_out = split.captions_by_class(split.held_out) if split.held_out is not None else [[] for _ in split.classes]
    train = split.captions_by_class(split.train)
    prompts = []
    for label, name in enumerate(split.classes):
        captions = held_out[label] or train[label] or [name]
        prompts.append([captions[index % len(captions)] for index in range(per_class)])
    return prompts
