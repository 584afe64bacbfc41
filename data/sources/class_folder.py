"""`--data.source class-folder`: one sub-folder per class (the ImageNet layout), for class-conditional models.

    DIR/n01440764/a.JPEG, DIR/n01443537/b.JPEG, ...

Classes are the sub-folders of `DIR` in sorted order (label 0 is the first name), as torchvision's
`ImageFolder` and VAR number ImageNet's 1000 synsets; images are found recursively inside each. Each
item adds `"label"` to the usual item and uses the folder name as its caption. Unreadable files are
skipped and counted as in the `folder` source.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from nextscale.data.config import DataConfig
from nextscale.data.sources import Source, register_source
from nextscale.data.sources.folder import ImageFolderDataset


class ClassFolderDataset(ImageFolderDataset):
    """Images under `DIR/<class>/...`; items carry `label` (the class's index in sorted order)."""

    captioned = False

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        parts = [PurePosixPath(name).parts for name in self.files]
        loose = [name for name, part in zip(self.files, parts) if len(part) < 2]
        if loose:
            raise ValueError(
                f"{self.root} holds images outside any class sub-folder (e.g. {loose[0]}): put every image "
                "in DIR/<class name>/"
            )
        self.classes: list[str] = sorted({part[0] for part in parts})
        label_of = {name: label for label, name in enumerate(self.classes)}
        self.labels = [label_of[part[0]] for part in parts]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def caption(self, index: int) -> str:
        return self.classes[self.labels[index]]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        return {**item, "label": self.labels[item["index"]], "attributes": {"class": item["caption"]}}


register_source(Source("class-folder", lambda config, shuffle: ClassFolderDataset(config)))
