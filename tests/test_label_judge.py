"""The label judge and label adherence on your own labelled images: a class folder of solid colours and a
folder whose metadata.jsonl has a label column, 16 px, a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from nextscale.data import DataConfig
from nextscale.eval.label_adherence import LabelAdherenceConfig, format_report
from nextscale.eval.label_adherence import main as label_adherence
from nextscale.eval.label_judge import LabelJudge, LabelJudgeTrainConfig, train_label_judge
from nextscale.eval.labels import class_prompts, labelled_split
from nextscale.sampling.pipeline import load_pipeline

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 50), "red": (220, 30, 40)}


def class_folder(root: Path, per_class: int = 12) -> Path:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            shade = tuple(max(0, c - 5 * index) for c in colour)
            Image.new("RGB", (16, 16), shade).save(root / name / f"{index:02d}.png")
    return root


def judge_run(output: Path, data: DataConfig, **overrides) -> LabelJudgeTrainConfig:
    settings = dict(output_dir=str(output), data=data, steps=30, batch_size=8, learning_rate=5e-3, warmup_steps=3,
                    log_every=10, checkpoint_every=1000, tracker="none")
    settings.update(overrides)
    return LabelJudgeTrainConfig(**settings)


def test_a_judge_trained_on_a_class_folder_scores_samples_against_held_out_images(tmp_path, tiny_pipeline_dir,
                                                                                  capsys):
    data = DataConfig(source="class-folder", path=str(class_folder(tmp_path / "images")), image_size=16)
    result = train_label_judge(judge_run(tmp_path / "judge", data))
    metrics = result.metrics
    assert metrics["classes"] == sorted(COLOURS) and metrics["held_out_images"] == 3  # one held out per class
    assert metrics["accuracy"] == 1.0, metrics  # solid colours: the judge reads them all
    judge = LabelJudge.from_pretrained(tmp_path / "judge" / "model")
    assert judge.config.classes == tuple(sorted(COLOURS)) and judge.config.image_size == 16
    assert json.loads((tmp_path / "judge" / "data.json").read_text())["data"]["source"] == "class-folder"
    # samples of the tiny random pipeline, prompted with each class's name, against the held-out images
    report = label_adherence(LabelAdherenceConfig(pipeline=str(tiny_pipeline_dir), judge=str(tmp_path / "judge"),
                                                  images_per_class=4, out=tmp_path / "adherence"))
    assert report["prompts"] == {name: [name] for name in sorted(COLOURS)}
    (row,) = report["sweep"]
    assert report["real"]["accuracy"] == 1.0 and 0.0 <= row["accuracy"] <= 1.0 and row["cfg_scale"] == 4.0
    assert report["gap"] == pytest.approx(report["real"]["mean_per_class"] - row["mean_per_class"])
    assert row["frechet_distance"] >= 0 and report["reconstructed"]["frechet_distance"] >= 0
    assert report["settings"].startswith("sampling with the defaults")  # the tiny pipeline records none
    printed = capsys.readouterr().out
    assert format_report(report) in printed and "samples are " in printed
    assert json.loads((tmp_path / "adherence" / "label_adherence.json").read_text())["gap"] == report["gap"]
    # a sweep over guidance scales, the chosen one recorded in (a copy of) the pipeline for sample.py
    pipeline = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "pipeline"))
    swept = label_adherence(LabelAdherenceConfig(pipeline=str(pipeline), judge=str(tmp_path / "judge" / "model"),
                                                 images_per_class=2, cfg_scales=(0.0, 2.0), top_k=0, record=True,
                                                 out=tmp_path / "sweep"))
    assert [row["cfg_scale"] for row in swept["sweep"]] == [0.0, 2.0]
    recorded = load_pipeline(pipeline).recommended
    assert recorded["cfg_scale"] == swept["best_cfg_scale"] and recorded["top_k"] == 0
    assert recorded["source"].startswith("label adherence on ")
    assert "samples cfg 0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="labelled images"):
        LabelJudgeTrainConfig(output_dir=str(tmp_path / "x"))  # the synthetic default has no labels
    # trained on the pipeline tokenizer's reconstructions too (a part of every batch)
    again = train_label_judge(judge_run(tmp_path / "judge2", data, steps=10,
                                        tokenizer=str(tiny_pipeline_dir / "tokenizer")))
    assert again.metrics["held_out_images"] == 3
    with pytest.raises(ValueError, match="the tokenizer works at 16 px"):
        train_label_judge(judge_run(tmp_path / "judge3", DataConfig(source="class-folder", path=data.path,
                                                                    image_size=8),
                                    tokenizer=str(tiny_pipeline_dir / "tokenizer")))


def test_labels_from_a_metadata_column_and_the_captions_of_each_class(tmp_path):
    root = tmp_path / "captioned"
    root.mkdir()
    lines = []
    for index in range(40):
        label = ["cat", "dog"][index % 2]
        Image.new("RGB", (16, 16), (index * 5, 100, 100)).save(root / f"{index:02d}.png")
        record = {"file_name": f"{index:02d}.png", "text": f"a {label} number {index % 6}"}
        if index != 4:  # one image without a label: left out
            record["label"] = label
        lines.append(json.dumps(record))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    split = labelled_split(DataConfig(source="folder", path=str(root), image_size=16))
    assert split.classes == ("cat", "dog") and 4 not in split.labels and len(split.labels) == 39
    assert split.held_out is not None and list(split.held_out.indices) == [9, 19, 29, 39]  # the pipeline's rule
    assert split.label_of(torch.tensor([9, 10, 4])).tolist() == [1, 0, -1]
    prompts = class_prompts(split, 3, class_names=False)
    # dogs: their held-out captions in turn; cats have none held out (9, 19, 29, 39 are dogs): training captions
    assert prompts == [["a cat number 0", "a cat number 2", "a cat number 4"],
                       ["a dog number 3", "a dog number 1", "a dog number 5"]]
    assert class_prompts(split, 2, class_names=True) == [["cat", "cat"], ["dog", "dog"]]
    with pytest.raises(ValueError, match="0 classes found"):
        labelled_split(DataConfig(source="folder", path=str(root), image_size=16), column="text_missing")
