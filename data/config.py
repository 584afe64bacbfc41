"""`DataConfig`: which source the training images and captions come from, and how they are decoded."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DataConfig:
    """Where training images and captions come from and how they are decoded."""

    source: str = "synthetic"
    """A registered source: synthetic (built-in portraits, the offline default), folder (an image folder) or
    webdataset (tar shards); see `nextscale.data.sources`."""
    path: str | None = None
    """Image folder root, or a shard pattern such as "data/{00000..00099}.tar" (unused for synthetic)."""
    image_size: int = 64
    """Side of the square training images: shorter side resized to it, then cropped."""
    random_crop: bool = False
    """Crop at a random position along the longer side instead of the centre."""
    synthetic_length: int = 50_000
    """Number of synthetic portraits per epoch."""
    zoom_levels: tuple[int, ...] = (1,)
    """Synthetic: zoom levels (1, 2, 4) of the portraits, one drawn per item from (seed, index) uniformly over
    this tuple (repeat a level to weight it); 2 and 4 show the centre half and quarter of the 1x view."""
    concepts: tuple[str, ...] = ()
    """Synthetic: concepts the ordinary portraits lack, added as extra attributes (`hat`: a red, blue or green
    hat, named in the caption); each draws from its own random stream, so the rest of every item is unchanged."""
    concept_items: int | None = None
    """Synthetic, with --data.concepts: items 0 .. N-1 carry the concepts and the others are ordinary
    portraits; None: each item carries each concept with probability 1/2."""
    seed: int = 0
    """Synthetic data seed (0 train, 1 held-out evaluation) and seed of WebDataset shuffling."""
    max_bad_fraction: float = 0.01
    """Abort when more than this fraction of the inputs tried were unreadable (they are skipped)."""
    bad_check_after: int = 100
    """Inputs a process tries before it applies `max_bad_fraction` (so one early bad file is no verdict)."""
    max_image_pixels: int = 40_000_000
    """Skip images declaring more pixels (decompression bombs). PIL's own limit still applies on top:
    it refuses images above 2 * PIL.Image.MAX_IMAGE_PIXELS (~179 MP) before we see them."""
    max_file_bytes: int = 64 * 2**20
    """Skip files larger than this many bytes (counted as too_large) instead of reading them whole."""
    shuffle_buffer: int = 1000
    """WebDataset: samples held in the in-memory shuffle buffer."""
    shard_by_process: bool = False
    """WebDataset: give each distributed process its own shards. Leave False when the loader goes
    through `accelerator.prepare`, which already dispatches or shards the batches across processes."""

    def __post_init__(self) -> None:
        from nextscale.data.sources import get_source  # the registry imports this module

        if get_source(self.source).needs_path and not self.path:
            raise ValueError(f"source={self.source!r} needs a path (an image folder or a shard pattern)")
        if (self.concepts or self.concept_items is not None) and self.source != "synthetic":
            raise ValueError(f"concepts apply to the synthetic source only, not {self.source!r}")
        if self.zoom_levels != (1,) and self.source != "synthetic":
            raise ValueError(f"zoom_levels applies to the synthetic source only, not {self.source!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be positive, got {self.max_file_bytes}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction is a fraction in [0, 1], got {self.max_bad_fraction}")


@dataclass(frozen=True)
class HeldOutConfig:
    """Held-out images for the final evaluation, read like --data (the same decoding and image size)."""

    path: str | None = None
    """A folder (or shard pattern) of held-out images, never trained on. None: hold out part of --data (the
    source's own held-out split, else every k-th item of a folder, else the last WebDataset shard)."""
    source: str | None = None
    """The held-out images' source when it is not --data.source (e.g. synthetic for the portraits' own)."""

    def resolve(self, data: DataConfig) -> DataConfig | None:
        """The DataConfig of the held-out images (None: split off `data`); ValueError names a bad option."""
        if self.path is None and self.source is None:
            return None
        try:
            return replace(data, source=self.source or data.source, path=self.path)
        except ValueError as error:
            raise ValueError(f"--eval-data: {error}") from None
