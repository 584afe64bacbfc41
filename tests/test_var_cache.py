"""The transformer's code and caption cache: each distinct caption's text states are stored once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT_MAX_LENGTH, tiny_tokenizer_config
from PIL import Image

from nextscale.data import DataConfig, build_dataset, collate
from nextscale.scales import flatten_codes
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.var_data import TEXT_FILE, CachedCodesDataset, build_cache, deduplicate, mixing_captions
from nextscale.transformer.text import TextEncoder

CAPTIONS = ["a man with a beard", "a woman with red hair", "a portrait"]


def write_folder(root: Path, count: int) -> Path:
    """`count` 16 px PNGs whose captions cycle through the three CAPTIONS, in metadata.jsonl."""
    root.mkdir(parents=True)
    lines = []
    for index in range(count):
        Image.new("RGB", (16, 16), (index * 7 % 256, 40, 200 - index % 150)).save(root / f"{index:03d}.png")
        lines.append(json.dumps({"file_name": f"{index:03d}.png", "text": CAPTIONS[index % 3]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_deduplicate_keeps_first_appearance_order():
    distinct, index = deduplicate(["b", "a", "b", "b", "c", "a"])
    assert distinct == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 0, 2, 1]
    empty, none = deduplicate([])
    assert empty == [] and none.tolist() == []


def test_cache_round_trip_with_duplicate_captions(tiny_bert_dir, tmp_path, capsys):
    torch.manual_seed(0)
    tokenizer = MultiScaleVQVAE(tiny_tokenizer_config()).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    encoder = TextEncoder.from_pretrained(str(tiny_bert_dir), max_length=TINY_TEXT_MAX_LENGTH)
    sizes = {}
    for count in (12, 48):
        data = DataConfig(source="folder", path=str(write_folder(tmp_path / f"images{count}", count)), image_size=16)
        dataset = build_dataset(data)
        cache = build_cache(tmp_path / f"cache{count}", tokenizer, str(tmp_path / "tokenizer"), encoder, data,
                            dataset, count, progress=True)
        assert f"{count} items, 3 distinct captions" in capsys.readouterr().out
        cached = CachedCodesDataset(cache)
        assert len(cached) == count and sorted(cached.captions) == sorted(CAPTIONS)
        assert cached.text["text_pooled"].shape[0] == 3  # one row per distinct caption
        sizes[count] = (cache / TEXT_FILE).stat().st_size
        # every item gets back its own codes and its own caption's text states
        images = torch.stack([dataset[index]["image"] for index in range(count)])
        codes = flatten_codes(tokenizer.encode(images))
        for index in range(count):
            item = cached[index]
            caption = dataset[index]["caption"]
            assert cached.caption(index) == caption
            assert torch.equal(item["codes"], codes[index])
            direct = encoder.encode([caption]).as_dict()
            torch.testing.assert_close(item["text_pooled"].float(), direct["text_pooled"][0], atol=2e-3, rtol=2e-3)
            torch.testing.assert_close(item["text_tokens"].float(), direct["text_tokens"][0], atol=2e-3, rtol=2e-3)
            assert torch.equal(item["text_mask"].bool(), direct["text_mask"][0].bool())
    # the text states grow with the distinct captions, not the items: 4x the items, the same file size
    assert sizes[48] == sizes[12], sizes


@pytest.mark.filterwarnings("ignore:.*exceed max_length")  # the tiny encoder reads 12 tokens
def test_cache_with_mixing_captions(tiny_bert_dir, tmp_path):
    """Every item gets the text states of its own detail and layout captions (drawn from the data seed and
    its index), stored among the distinct captions; a source without attributes is refused with one line."""
    torch.manual_seed(0)
    tokenizer = MultiScaleVQVAE(tiny_tokenizer_config()).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    encoder = TextEncoder.from_pretrained(str(tiny_bert_dir), max_length=TINY_TEXT_MAX_LENGTH)
    data = DataConfig(image_size=16, synthetic_length=24, zoom_levels=(1, 2, 4), seed=3)
    dataset = build_dataset(data)
    plain = CachedCodesDataset(build_cache(tmp_path / "plain", tokenizer, str(tmp_path / "tokenizer"), encoder,
                                           data, dataset, 24, progress=False))
    cached = CachedCodesDataset(build_cache(tmp_path / "mixing", tokenizer, str(tmp_path / "tokenizer"), encoder,
                                            data, dataset, 24, progress=False, mixing=True))
    assert not plain.has_mixing and "detail_text_pooled" not in plain[0] and cached.has_mixing
    expected = mixing_captions(collate([dataset[index] for index in range(24)]), seed=3)
    assert set(expected) == {"detail", "layout"}
    for kind, captions in expected.items():
        assert len(set(captions)) > 12  # drawn per item
        for index in (0, 5, 23):
            item, caption = cached[index], captions[index]
            assert cached.captions[int(cached.mixing_index[kind][index])] == caption != cached.caption(index)
            direct = encoder.encode([caption]).as_dict()
            torch.testing.assert_close(item[f"{kind}_text_pooled"].float(), direct["text_pooled"][0],
                                       atol=2e-3, rtol=2e-3)
            assert torch.equal(item[f"{kind}_text_mask"].bool(), direct["text_mask"][0].bool())
            assert torch.equal(item["codes"], plain[index]["codes"]) and cached.caption(index) == plain.caption(index)
    assert expected["detail"] != expected["layout"]
    folder = DataConfig(source="folder", path=str(write_folder(tmp_path / "images", 6)), image_size=16)
    with pytest.raises(ValueError, match="--mixing needs detail captions"):
        build_cache(tmp_path / "folder", tokenizer, str(tmp_path / "tokenizer"), encoder, folder,
                    build_dataset(folder), 6, progress=False, mixing=True)


def test_the_encoding_progress_bar_counts_to_the_data_size(tmp_path, monkeypatch):
    """--cache-images larger than the data: the bar's total is the number of items there are (it once
    counted to --cache-images and stopped short), and every item is encoded."""
    import nextscale.train.var_data as var_data

    totals: list[int] = []
    progress: list[int] = []

    class Bar:
        def __init__(self, total: int, **_: object) -> None:
            totals.append(total)

        def update(self, count: int) -> None:
            progress.append(count)

        def close(self) -> None:
            pass

    monkeypatch.setattr(var_data, "tqdm", Bar)
    tokenizer = MultiScaleVQVAE(tiny_tokenizer_config()).eval()
    data = DataConfig(source="folder", path=str(write_folder(tmp_path / "images", 20)), image_size=16)
    codes, captions, _ = var_data.encode_dataset(tokenizer, build_dataset(data), 24_000, batch_size=8)
    assert totals == [20] and sum(progress) == 20 and len(captions) == 20 and codes.shape[0] == 20
    var_data.encode_dataset(tokenizer, build_dataset(data), 12, batch_size=8)  # fewer asked: that many
    assert totals[-1] == 12 and sum(progress) == 32
