"""`python -m nextscale.data.celeba`: CelebA as a captioned image folder for the faces-256 recipe.

    python -m nextscale.data.celeba --images img_align_celeba --attributes list_attr_celeba.txt \\
        --out faces/ [--seed 0] [--link | --copy] [--size 256]

writes `faces/` with the images (symlinked by default, where the OS allows; `--copy` copies them; `--size S`
centre-crops and resizes them to S x S with PIL, CelebA's aligned images being 178 x 218) under their own
file names, and a `metadata.jsonl` (`{"file_name": ..., "text": ...}`) that `--data.source folder` reads.

Captions put CelebA's binary attributes (`list_attr_celeba.txt`: the image count, the 40 attribute names,
then one line per image of its file name and 40 values of 1 or -1) into words: a template ("a photo of
{subject}", "{subject}", "a close-up portrait of {subject}", "a male/female face ...") with the subject
"a man"/"a woman" (Male), sometimes "young"/"older" (Young), and a random subset of the image's other
attributes as phrases (`PHRASES`; a beard is not No_Beard; hair colour and style make one phrase, e.g.
"wavy blond hair"). Skipped: Attractive (subjective) and Blurry, Oval_Face, Pointy_Nose (noisy labels).
Each caption is drawn from `numpy.random.default_rng([seed, image_index, 0])`, image_index the image's row
in the attributes file, so the output is reproducible. The folder source reads one caption per image, so
each image gets one caption (there is no --captions-per-image).

An image listed but absent from --images is skipped and counted in a warning line at the end; a missing
file or a malformed attributes line (named by its line number) is one `error: ...` line (exit 2).

FFHQ, CelebA-HQ or any folder of faces with your own captions needs no conversion: point
`--data.source folder --data.path DIR` at it, with a `metadata.jsonl` as above or a sidecar `.txt` caption
next to each image (same stem).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
"""CelebA's 40 attributes, in the order of its `list_attr_celeba.txt`."""

PHRASES: dict[str, tuple[str, str]] = {
    # attribute: (how the phrase joins the subject: "adj" before the noun, "with" or "wearing" after, phrase)
    "Smiling": ("adj", "smiling"),
    "Bald": ("adj", "bald"),
    "Chubby": ("adj", "chubby"),
    "No_Beard": ("with", "a beard"),  # when the image has no No_Beard
    "Mustache": ("with", "a mustache"),
    "Goatee": ("with", "a goatee"),
    "Sideburns": ("with", "sideburns"),
    "5_o_Clock_Shadow": ("with", "a five o'clock shadow"),
    "Eyeglasses": ("with", "eyeglasses"),
    "Bangs": ("with", "bangs"),
    "Receding_Hairline": ("with", "a receding hairline"),
    "Mouth_Slightly_Open": ("with", "a slightly open mouth"),
    "Arched_Eyebrows": ("with", "arched eyebrows"),
    "Bushy_Eyebrows": ("with", "bushy eyebrows"),
    "Bags_Under_Eyes": ("with", "bags under the eyes"),
    "Narrow_Eyes": ("with", "narrow eyes"),
    "Big_Nose": ("with", "a big nose"),
    "Big_Lips": ("with", "big lips"),
    "High_Cheekbones": ("with", "high cheekbones"),
    "Double_Chin": ("with", "a double chin"),
    "Pale_Skin": ("with", "pale skin"),
    "Rosy_Cheeks": ("with", "rosy cheeks"),
    "Wearing_Hat": ("wearing", "a hat"),
    "Wearing_Earrings": ("wearing", "earrings"),
    "Wearing_Necklace": ("wearing", "a necklace"),
    "Wearing_Necktie": ("wearing", "a necktie"),
    "Wearing_Lipstick": ("wearing", "lipstick"),
    "Heavy_Makeup": ("wearing", "heavy makeup"),
}
"""The phrase of each attribute an image has (No_Beard: one it lacks). Male, Young and the hair attributes
are worded apart (`subject`, `hair_phrase`); Attractive, Blurry, Oval_Face and Pointy_Nose never are."""

HAIR_COLOURS = {"Blond_Hair": "blond", "Black_Hair": "black", "Brown_Hair": "brown", "Gray_Hair": "gray"}
HAIR_STYLES = {"Wavy_Hair": "wavy", "Straight_Hair": "straight"}
TEMPLATES = ("a photo of {subject}", "{subject}", "a close-up portrait of {subject}", "a {sex} face")
"""Caption templates, one drawn per caption; the last names the sex as an adjective and never the age."""
MAX_PHRASES = 3


def hair_phrase(attributes: dict[str, bool]) -> str | None:
    """"wavy blond hair", "black hair", "straight hair" (None when bald or nothing is said of the hair); a
    colour or style that contradicts another of the image's is left out."""
    if attributes.get("Bald"):
        return None
    colours = [word for name, word in HAIR_COLOURS.items() if attributes.get(name)]
    styles = [word for name, word in HAIR_STYLES.items() if attributes.get(name)]
    words = (styles if len(styles) == 1 else []) + (colours if len(colours) == 1 else [])
    return " ".join([*words, "hair"]) if words else None


def features(attributes: dict[str, bool]) -> list[tuple[str, str]]:
    """The (kind, phrase) of every attribute of an image that a caption may mention, in `PHRASES` order,
    the hair phrase last."""
    found = [(kind, phrase) for name, (kind, phrase) in PHRASES.items()
             if attributes.get(name, name == "No_Beard") != (name == "No_Beard")]
    hair = hair_phrase(attributes)
    return found + [("with", hair)] if hair else found


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def caption(attributes: dict[str, bool], rng: np.random.Generator) -> str:
    """One caption of an image with these attributes (name -> present), drawn with `rng`."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    male = attributes.get("Male", False)
    found = features(attributes)
    count = int(rng.integers(1, min(MAX_PHRASES, len(found)) + 1)) if found else 0
    chosen = sorted(rng.choice(len(found), size=count, replace=False).tolist()) if count else []
    adjectives = [found[i][1] for i in chosen if found[i][0] == "adj"]
    with_ = [found[i][1] for i in chosen if found[i][0] == "with"]
    wearing = [found[i][1] for i in chosen if found[i][0] == "wearing"]
    if "{sex}" in template:
        text = _article(" ".join([*adjectives, "male" if male else "female"])) + " face"
    else:
        if rng.random() < 0.5:
            adjectives.insert(0, "young" if attributes.get("Young", False) else "older")
        subject = _article(" ".join([*adjectives, "man" if male else "woman"]))
        text = template.format(subject=subject)
    if with_:
        text += f" with {_listed(with_)}"
    if wearing:
        text += f"{',' if with_ else ''} wearing {_listed(wearing)}"
    return text


def image_caption(attributes: dict[str, bool], seed: int, image_index: int) -> str:
    """The caption the command writes for the image on row `image_index` (0-based) of the attributes file."""
    return caption(attributes, np.random.default_rng([seed, image_index, 0]))


def read_attributes(path: Path) -> list[tuple[str, dict[str, bool]]]:
    """The rows of a `list_attr_celeba.txt`: (file name, attribute -> present); ValueError names a malformed
    line by its number."""
    if not path.is_file():
        raise FileNotFoundError(f"attributes file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise ValueError(f"{path}:1: expected the number of images, got {(lines or [''])[0][:80]!r}")
    names = lines[1].split() if len(lines) > 1 else []
    unknown = sorted(set(names) - set(ATTRIBUTES))
    if len(names) != len(set(names)) or unknown or not {"Male", "No_Beard"} <= set(names):
        raise ValueError(f"{path}:2: expected CelebA's attribute names (5_o_Clock_Shadow ... Young), got "
                         f"{lines[1][:80] if len(lines) > 1 else ''!r}")
    rows = []
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        values = fields[1:]
        if len(values) != len(names) or any(value not in ("1", "-1") for value in values):
            raise ValueError(f"{path}:{number}: expected a file name and {len(names)} values of 1 or -1, "
                             f"got {line.strip()[:80]!r}")
        rows.append((fields[0], {name: value == "1" for name, value in zip(names, values)}))
    return rows


@dataclass(frozen=True)
class CelebAConfig:
    """CelebA (images and list_attr_celeba.txt) -> an image folder with captions in metadata.jsonl."""

    images: Path
    """The folder of CelebA's images (img_align_celeba)."""
    attributes: Path
    """CelebA's list_attr_celeba.txt."""
    out: Path
    """The folder to write (created): the images under their own names and metadata.jsonl."""
    seed: int = 0
    """Seed of the captions (with each image's row in the attributes file)."""
    link: bool = False
    """Symlink the images into --out (the default, where the OS allows; else they are copied)."""
    copy: bool = False
    """Copy the images into --out instead of linking them."""
    size: int | None = None
    """Centre-crop each image to a square and resize it to SIZE x SIZE (written, never linked)."""


def _place(source: Path, target: Path, config: CelebAConfig) -> str:
    """Put one image at `target`: resized, copied or symlinked; returns how."""
    if target.is_symlink() or target.exists():
        target.unlink()
    if config.size is not None:
        from PIL import Image, ImageOps

        from nextscale.decoding import decode_rgb

        square = ImageOps.fit(decode_rgb(source.read_bytes()), (config.size, config.size), Image.Resampling.LANCZOS)
        square.save(target, quality=95)
        return f"resized to {config.size}"
    if not config.copy:
        try:
            os.symlink(source.resolve(), target)
            return "linked"
        except OSError:
            pass
    shutil.copyfile(source, target)
    return "copied"


def convert(config: CelebAConfig) -> None:
    if config.link and (config.copy or config.size is not None):
        raise ValueError("--link cannot go with --copy or --size (a resized image is written, not linked)")
    if config.size is not None and config.size < 1:
        raise ValueError(f"--size must be positive, got {config.size}")
    if config.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {config.seed}")
    if not config.images.is_dir():
        raise FileNotFoundError(f"image folder {config.images} does not exist or is not a directory")
    rows = read_attributes(config.attributes)
    if config.out.resolve() == config.images.resolve():
        raise ValueError("--out must not be the --images folder")
    config.out.mkdir(parents=True, exist_ok=True)
    records, absent, unreadable, how = [], [], [], "linked"
    for index, (name, attributes) in enumerate(tqdm(rows, desc="faces", unit="image", disable=len(rows) < 1000)):
        source = config.images / name
        if not source.is_file():
            absent.append(name)
            continue
        try:
            how = _place(source, config.out / name, config)
        except (OSError, ValueError) as error:  # unreadable files, and bytes that do not decode (UndecodableImage)
            unreadable.append(f"{name} ({error})")
            continue
        records.append({"file_name": name, "text": image_caption(attributes, config.seed, index)})
    with open(config.out / "metadata.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    if absent:
        print(f"warning: skipped {len(absent)} image(s) listed in {config.attributes} but absent from "
              f"{config.images} (first: {absent[0]})", file=sys.stderr)
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable image(s) (first: {unreadable[0]})", file=sys.stderr)
    print(f"wrote {len(records)} of {len(rows)} images ({how}) and their captions to {config.out / 'metadata.jsonl'}"
          f"; skipped {len(absent)} absent and {len(unreadable)} unreadable")


def main(argv: list[str] | None = None) -> None:
    from nextscale.errors import run_cli

    run_cli(CelebAConfig, convert, argv)


if __name__ == "__main__":
    main()
