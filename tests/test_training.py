"""Training loops end to end on tiny models: losses fall, exports load, resume continues exactly, previews.

Two synchronised processes and kill -9 resumes: tests/test_resume.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT_MAX_LENGTH, tiny_tokenizer_config
from PIL import Image

from nextscale.data import DataConfig
from nextscale.images import save_grid
from nextscale.sampling import generate
from nextscale.sampling.cli import SampleArgs
from nextscale.sampling.pipeline import load_pipeline
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.optim import parameter_groups, warmup_stable_decay
from nextscale.train.preview import PreviewConfig
from nextscale.train.state import CheckpointError
from nextscale.train.tokenizer_loop import TokenizerTrainConfig, train_tokenizer
from nextscale.train.var_data import CachedCodesDataset
from nextscale.train.var_loop import VarTrainConfig, drop_condition, drop_labels, per_scale_metrics, train_var
from nextscale.transformer import NextScaleTransformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent


def tokenizer_run(output_dir: Path, **overrides) -> TokenizerTrainConfig:
    settings = dict(
        output_dir=str(output_dir),
        model=tiny_tokenizer_config(),
        data=DataConfig(image_size=16, synthetic_length=256),
        steps=40,
        batch_size=8,
        learning_rate=2e-3,
        warmup_steps=5,
        mixed_precision="no",
        log_every=5,
        sample_every=20,
        checkpoint_every=20,
        eval_images=32,
        tracker="none",
    )
    settings.update(overrides)
    return TokenizerTrainConfig(**settings)


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("tokenizer-run")
    result = train_tokenizer(tokenizer_run(output))
    return output, result.metrics


def test_the_demo_preset_trains_with_the_bundled_alignment_teacher(tmp_path):
    """The demo's data (synthetic portraits at 64 px) gets the preset's alignment: the bundled teacher loads
    offline and its loss enters the tokenizer's from the first step."""
    from nextscale.tokenizer.losses.alignment import AlignmentConfig
    from nextscale.train.tokenizer_loop import DEMO_TEACHER, demo_alignment

    model = tiny_tokenizer_config(image_size=64, channel_mult=(1, 2, 2, 2), scale_sizes=(1, 2, 4, 8))
    settings = dict(model=model, data=DataConfig(synthetic_length=64), steps=1, batch_size=2, eval_images=4,
                    sample_every=1000)
    aligned = tokenizer_run(tmp_path / "aligned", **settings)
    assert aligned.alignment == demo_alignment()
    plain = tokenizer_run(tmp_path / "plain", alignment=AlignmentConfig(teacher="none"), **settings)
    curves = [train_tokenizer(config).metrics["loss_curve"] for config in (aligned, plain)]
    assert curves[0][0][1] > curves[1][0][1]  # same seed, same batch: the alignment term adds to the loss
    recorded = json.loads((tmp_path / "aligned" / "train_config.json").read_text())["alignment"]
    assert recorded["teacher"] == str(DEMO_TEACHER) and recorded["scales"] == "last"

def test_tokenizer_training_loss_falls_and_exports(trained_tokenizer):
    output, metrics = trained_tokenizer
    curve = [loss for _, loss in metrics["loss_curve"]]
    assert curve[-1] < 0.6 * curve[0], curve
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["held_out"] is True and saved["num_images"] == 32
    assert len(saved["psnr_first_k"]) == 3 and len(saved["per_scale"]) == 3
    assert (output / "samples" / "step_000040.png").is_file()
    model = MultiScaleVQVAE.from_pretrained(output / "model")
    assert model.config.scale_sizes == (1, 2, 4)


def test_tokenizer_resume_reproduces_the_loss_curve(trained_tokenizer, tmp_path):
    output, metrics = trained_tokenizer
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output / "checkpoints", resumed_dir / "checkpoints")
    result = train_tokenizer(tokenizer_run(resumed_dir, resume="latest"))
    assert result.metrics["resumed_at"] == [20]  # continued from the step-20 checkpoint
    # the curve of the resumed run holds the steps before the checkpoint too, and the rest is the same
    assert result.metrics["loss_curve"] == metrics["loss_curve"]


def test_the_tokenizer_log_names_its_terms_and_why_the_loss_rises_in_warm_up(tmp_path, capsys):
    """The first lines give the loss's terms, the step a late term joins at, and why the quantisation term
    rises in warm-up; the logs carry the latent's and the codes' scales that explain it."""
    from nextscale.tokenizer.losses.discriminator import AdversarialConfig

    config = tokenizer_run(tmp_path / "run", steps=4, log_every=1, checkpoint_every=1000, sample_every=1000,
                           eval_images=8, adversarial=AdversarialConfig(weight=0.2, start_step=2, channels=8,
                                                                        num_layers=1))
    result = train_tokenizer(config)
    captured = capsys.readouterr()
    out = captured.out
    assert "psnr=" in captured.err and "quantization=" in captured.err  # beside the loss on the progress bar
    assert "loss = 1 l2 + 0.2 l1 + 1 quantization + 0.2 generator from step 3. The quantization term is the " \
        "latent's squared distance to its codes, in the latent's own units" in out
    assert "step 2: the adversarial term joins the loss from step 3 on" in out
    logs = result.metrics["last_train_logs"]
    assert logs["latent_rms"] > 0 and logs["codebook_rms"] > 0 and "psnr" in logs


def test_init_from_an_exported_tokenizer(trained_tokenizer, tmp_path):
    output, metrics = trained_tokenizer
    result = train_tokenizer(tokenizer_run(tmp_path / "tuned", init_from=str(output / "model"), steps=5,
                                           learning_rate=1e-4, checkpoint_every=1000, eval_images=32))
    first_loss = result.metrics["loss_curve"][0][1]
    assert first_loss < 1.5 * metrics["loss_curve"][-1][1]  # starts where the exported model ended
    assert result.metrics["psnr"] > metrics["psnr"] - 0.5
    with pytest.raises(ValueError, match="vocab_size: 64 there, 32 here"):
        train_tokenizer(tokenizer_run(tmp_path / "bad", init_from=str(output / "model"),
                                      model=tiny_tokenizer_config(vocab_size=32)))


def test_resume_names_a_bad_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        train_tokenizer(tokenizer_run(tmp_path / "run", resume=str(tmp_path)))


def test_warmup_stable_decay_schedule():
    values = [warmup_stable_decay(step, 100, 10, 0.2) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == 1.0
    assert all(v == 1.0 for v in values[10:80])
    assert all(b <= a for a, b in zip(values[80:], values[81:])) and values[-1] < 0.01


def test_parameter_groups_skip_norms_biases_and_embeddings():
    model = torch.nn.Sequential(torch.nn.Embedding(4, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(8, 8)]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_drop_condition_rate_and_content():
    batch = 4000
    text = {"text_tokens": torch.ones(batch, 3, 2), "text_mask": torch.ones(batch, 3, dtype=torch.bool),
            "text_pooled": torch.ones(batch, 2)}
    null = {"text_tokens": torch.zeros(1, 3, 2), "text_mask": torch.tensor([[True, True, False]]),
            "text_pooled": torch.zeros(1, 2)}
    out, dropped = drop_condition(text, null, 0.1, torch.Generator().manual_seed(0))
    assert 0.08 < dropped.float().mean().item() < 0.12
    assert torch.equal(out["text_pooled"][dropped], torch.zeros(int(dropped.sum()), 2))
    assert torch.equal(out["text_pooled"][~dropped], torch.ones(int((~dropped).sum()), 2))
    assert not out["text_mask"][dropped][:, 2].any() and out["text_mask"][~dropped].all()
    _, none_dropped = drop_condition(text, null, 0.0, torch.Generator().manual_seed(0))
    assert not none_dropped.any()


def test_drop_labels_rate_and_content():
    labels = torch.arange(4000) % 7
    dropped = drop_labels(labels, 7, 0.1, torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert torch.all(dropped[changed] == 7) and 0.08 < changed.float().mean() < 0.12


def test_per_scale_metrics():
    targets = torch.tensor([[1, 2, 2, 2, 2]])
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 2, 2, 0, 0]]), 4).float() * 10
    metrics = per_scale_metrics(logits, targets, (1, 2))
    assert metrics["accuracy_scale0"] == 1.0 and metrics["accuracy_scale1"] == 0.5
    assert metrics["loss_scale0"] < metrics["loss_scale1"]


def var_run(output_dir: Path, tokenizer: Path, text_encoder: Path, **overrides) -> VarTrainConfig:
    settings = dict(
        output_dir=str(output_dir),
        tokenizer=str(tokenizer),
        text_encoder=str(text_encoder),
        text_max_length=TINY_TEXT_MAX_LENGTH,
        model=TransformerConfig.preset("tiny"),
        data=DataConfig(image_size=16, synthetic_length=128),
        cache_images=128,
        steps=60,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=5,
        mixed_precision="no",
        log_every=10,
        checkpoint_every=1000,
        eval_images=32,
        tracker="none",
        preview=PreviewConfig(every=0),
    )
    settings.update(overrides)
    return VarTrainConfig(**settings)


def test_var_training_loss_falls_and_exports_a_pipeline(trained_tokenizer, tiny_bert_dir, tmp_path):
    output, _ = trained_tokenizer
    config = var_run(tmp_path / "var", output / "model", tiny_bert_dir,
                     preview=PreviewConfig(every=30, prompts=("a man with a beard", "a woman"), images_per_prompt=2))
    result = train_var(config)
    curve = [loss for _, loss in result.metrics["loss_curve"]]
    assert curve[-1] < curve[0] - 0.3, curve
    assert {"accuracy_scale0", "accuracy_scale2", "held_out_loss"} <= set(result.metrics)
    assert result.metrics["held_out_source"].startswith("the synthetic source's held-out split (seed ")
    pipeline = load_pipeline(tmp_path / "var" / "pipeline")
    assert pipeline.transformer.config.vocab_size == 64 and pipeline.text_encoder.width == 32
    # the pipeline records the previews' settings as its recommendation: sample.py's defaults sample like them
    assert {key: pipeline.recommended[key] for key in ("cfg_scale", "top_k", "top_p")} == {
        "cfg_scale": 2.0, "top_k": None, "top_p": 1.0}
    assert pipeline.recommended["source"].startswith("train_var.py, the settings of its previews (the defaults")
    assert SampleArgs().sampling_config(pipeline.recommended) == config.preview.sampling
    # previews every 30 steps and at the end; the last one is what sampling the exported pipeline gives
    previews = sorted(path.name for path in (tmp_path / "var" / "previews").iterdir())
    assert previews == ["step_000030.png", "step_000060.png"]
    preview = config.preview
    prompts = [prompt for prompt in preview.prompts for _ in range(preview.images_per_prompt)]
    seeds = [index for _ in preview.prompts for index in range(preview.images_per_prompt)]
    sampled = generate(pipeline, prompts, seeds, preview.sampling).images
    expected = tmp_path / "expected.png"
    save_grid(sampled, expected, columns=preview.images_per_prompt)
    assert np.array_equal(np.asarray(Image.open(expected)),
                          np.asarray(Image.open(tmp_path / "var" / "previews" / "step_000060.png")))
    # a second run (--overwrite: it replaces the first) reuses the cache (same fingerprint) instead of re-encoding
    cache = tmp_path / "var" / "cache" / "codes.safetensors"
    stamp = cache.stat().st_mtime_ns
    second = train_var(dataclasses.replace(config, overwrite=True))
    assert cache.stat().st_mtime_ns == stamp
    # --init-from continues the exported model with a fresh schedule
    exported, cache_dir = str(tmp_path / "var" / "model"), str(tmp_path / "var" / "cache")
    continued = train_var(var_run(tmp_path / "more", output / "model", tiny_bert_dir, init_from=exported,
                                  steps=5, log_every=5, warmup_steps=2, cache_dir=cache_dir))
    assert continued.metrics["loss_curve"][0][1] < second.metrics["loss_curve"][0][1] - 0.3
    with pytest.raises(ValueError, match="depth: 2 there, 3 here"):
        train_var(var_run(tmp_path / "bad", output / "model", tiny_bert_dir, init_from=exported,
                          model=TransformerConfig.preset("tiny", depth=3), cache_dir=cache_dir))


@pytest.mark.filterwarnings("ignore:.*exceed max_length")  # the tiny encoder reads 12 tokens
def test_mixing_trains_switched_passes_reproducibly(trained_tokenizer, tiny_bert_dir, tmp_path):
    """--mixing: the cache gains detail captions, the switched passes change training, and the switch draws
    come from the run's saved generator (two runs give the same curve)."""
    output, _ = trained_tokenizer
    settings = dict(steps=8, log_every=1, cond_drop=0.0, eval_images=16)
    plain = train_var(var_run(tmp_path / "plain", output / "model", tiny_bert_dir, **settings))
    runs = [train_var(var_run(tmp_path / f"mix{index}", output / "model", tiny_bert_dir, mixing=1.0,
                              cache_dir=str(tmp_path / "mix-cache"), **settings)) for index in range(2)]
    curves = [[loss for _, loss in run.metrics["loss_curve"]] for run in (plain, *runs)]
    assert curves[1] == curves[2]
    assert curves[0][0] == pytest.approx(curves[1][0], abs=0.5) and curves[0] != curves[1]
    assert CachedCodesDataset(tmp_path / "mix-cache").has_mixing
    # a layout_context model continued from the plain one (which has no detail marker): the marker, zero
    # at the start, is trained, and the exported model keeps the option
    layout = train_var(var_run(tmp_path / "layout", output / "model", tiny_bert_dir, mixing=1.0,
                               cache_dir=str(tmp_path / "mix-cache"), init_from=str(tmp_path / "plain" / "model"),
                               model=TransformerConfig.preset("tiny", layout_context=True), **settings))
    assert layout.model.detail_marker.abs().sum() > 0
    assert NextScaleTransformer.from_pretrained(tmp_path / "layout" / "model").config.layout_context
    with pytest.raises(ValueError, match="--mixing trains on the cached detail captions"):
        var_run(tmp_path / "bad", output / "model", tiny_bert_dir, mixing=0.5, cache=False)


def test_tokenizer_alignment_with_a_precomputed_teacher_cache(tmp_path):
    """--alignment.cache-dir runs the teacher once; the cached pyramids equal the teacher's own."""
    from transformers import Dinov2Config, Dinov2Model

    from nextscale.data import make_dataloader
    from nextscale.tokenizer.losses.alignment import (
        AlignmentConfig,
        FrozenVisionTeacher,
        TeacherFeatureCache,
        feature_pyramid,
    )

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=4, image_size=16)).save_pretrained(tmp_path / "dino")
    alignment = AlignmentConfig(teacher=str(tmp_path / "dino"), teacher_resolution=16, projection_width=16,
                                cache_dir=str(tmp_path / "teacher-cache"))
    config = tokenizer_run(tmp_path / "run", alignment=alignment, data=DataConfig(image_size=16, synthetic_length=64),
                           steps=12, checkpoint_every=1000, sample_every=1000, eval_images=8)
    result = train_tokenizer(config)
    assert all(loss == loss for _, loss in result.metrics["loss_curve"])  # finite, alignment included
    cache = TeacherFeatureCache(alignment.cache_dir, alignment.teacher, (1, 2, 4))
    batch = next(iter(make_dataloader(config.data, batch_size=8, shuffle=False)))
    teacher = FrozenVisionTeacher(alignment.teacher, resolution=16)
    expected = feature_pyramid(teacher(batch["image"]), (1, 2, 4))
    for cached, direct in zip(cache.lookup(batch["index"]), expected):
        torch.testing.assert_close(cached, direct, atol=2e-3, rtol=2e-3)  # stored as fp16
    with pytest.raises(KeyError, match="not in the teacher-feature cache"):
        cache.lookup(torch.tensor([64]))
    with pytest.raises(ValueError, match="delete it"):
        TeacherFeatureCache(alignment.cache_dir, "another-teacher", (1, 2, 4))


def write_class_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 8) -> Path:
    """One sub-folder of flat-coloured 16 px PNGs per class (the ImageNet layout)."""
    from PIL import Image

    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            shade = tuple(max(0, c - 6 * index) for c in colour)
            Image.new("RGB", (16, 16), shade).save(root / name / f"{index}.png")
    return root


def test_preview_prompts_are_the_runs_own_captions_unless_given():
    """Default previews: distinct captions spread over the held-out items (training items when none are held
    out), read without decoding images; --preview.prompts overrides; a caption-less folder previews ""."""
    from torch.utils.data import Dataset, Subset

    from nextscale.train.preview import preview_prompts

    class Captions(Dataset):
        def __init__(self, captions: list[str]) -> None:
            self.captions = captions

        def __len__(self) -> int:
            return len(self.captions)

        def caption(self, index: int) -> str:
            return self.captions[index]

        def __getitem__(self, index: int) -> dict:
            raise AssertionError("previews read captions, not images")

    data = Captions([f"caption {index % 7}" for index in range(40)])
    held_out, train = Subset(data, list(range(9, 40, 10))), Subset(data, [i for i in range(40) if i % 10 != 9])
    prompts, where = preview_prompts(PreviewConfig(num_prompts=3), held_out, train)
    assert where == "captions of the held-out data" and prompts == ("caption 2", "caption 5", "caption 1")
    prompts, where = preview_prompts(PreviewConfig(num_prompts=9), None, train)  # 7 distinct captions in all
    assert where == "captions of the training data" and sorted(prompts) == [f"caption {i}" for i in range(7)]
    assert preview_prompts(PreviewConfig(prompts=("a cat",)), held_out, train) == (("a cat",), "--preview.prompts")
    assert preview_prompts(PreviewConfig(), Captions(["", ""]), train)[0] == ("",)


def test_a_folder_run_previews_its_own_captions(trained_tokenizer, tiny_bert_dir, tmp_path, capsys):
    output, _ = trained_tokenizer
    folder = tmp_path / "images"
    folder.mkdir()
    words = ["a man with a beard", "a woman with red hair", "a portrait", "a woman with glasses", "blue hair",
             "a man", "a woman with a beard"]
    lines = []
    for index in range(40):
        Image.new("RGB", (16, 16), (index * 6, 90, 200 - index * 4)).save(folder / f"{index:02d}.png")
        lines.append(json.dumps({"file_name": f"{index:02d}.png", "text": words[index % 7]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    data = DataConfig(source="folder", path=str(folder), image_size=16)
    train_var(var_run(tmp_path / "var", output / "model", tiny_bert_dir, data=data, steps=2, batch_size=4,
                      cache_images=64, eval_images=8, preview=PreviewConfig(every=2, images_per_prompt=1)))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("previews every"))
    assert line.startswith("previews every 2 steps, 4 prompts (captions of the held-out data): "), line
    shown = line.split("): ", 1)[1].split(" | ")
    assert len(set(shown)) == 4 and all(prompt.strip("'") in words for prompt in shown), shown
    assert (tmp_path / "var" / "previews" / "step_000002.png").is_file()


def test_class_conditional_training_from_class_folders(trained_tokenizer, tmp_path):
    from nextscale.data.sources.class_folder import ClassFolderDataset
    from nextscale.sampling import SamplingConfig, generate

    output, _ = trained_tokenizer
    folder = write_class_folder(tmp_path / "images", {"red": (250, 20, 20), "blue": (20, 20, 250)})
    data = DataConfig(source="class-folder", path=str(folder), image_size=16)
    dataset = ClassFolderDataset(data)
    assert dataset.classes == ["blue", "red"] and dataset[0]["label"] == 0 and dataset[15]["label"] == 1
    config = var_run(tmp_path / "var", output / "model", Path("unused"), condition="class", data=data, steps=30,
                     batch_size=8, eval_images=16)
    result = train_var(config)
    curve = [loss for _, loss in result.metrics["loss_curve"]]
    assert curve[-1] < curve[0] - 0.3, curve
    pipeline = load_pipeline(tmp_path / "var" / "pipeline")
    assert pipeline.text_encoder is None and pipeline.transformer.config.num_classes == 2
    assert not pipeline.transformer.config.cross_attention
    images = generate(pipeline, [0, 1], 0, SamplingConfig(cfg_scale=2.0, top_k=1)).images
    red_minus_blue = images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))  # (2,): per image
    assert red_minus_blue[1] > red_minus_blue[0], red_minus_blue  # class 1 ("red") comes out redder
    with pytest.raises(ValueError, match="--data.source class-folder"):
        var_run(tmp_path / "bad", output / "model", Path("unused"), condition="class")


def test_resume_mid_epoch_with_random_crops_and_workers_is_exact(tmp_path):
    """Own images, random crops and two loader workers: a run resumed mid-epoch sees the same crops."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(30):  # wide images: the random crop moves along the width
        pixels = rng.integers(0, 256, (16, 28, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.png")
    data = DataConfig(source="folder", path=str(folder), image_size=16, random_crop=True)
    settings = dict(data=data, steps=16, batch_size=4, num_workers=2, log_every=1, checkpoint_every=10,
                    eval_images=3, sample_every=100)
    full = train_tokenizer(tokenizer_run(tmp_path / "full", **settings))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints", resumed_dir / "checkpoints")
    resumed = train_tokenizer(tokenizer_run(resumed_dir, resume="latest", **settings))
    assert resumed.metrics["resumed_at"] == [10]  # 27 training images, 6 batches an epoch: mid-epoch
    assert resumed.metrics["loss_curve"] == full.metrics["loss_curve"]


def test_both_trainings_hold_out_the_same_items_and_count_every_bad_input(tmp_path, tiny_bert_dir):
    """One split rule for the pipeline (the tokenizer's --eval-images 8 and the transformer's 16 hold out the
    same items), bad files of both parts counted exactly with two loader workers, recorded in metrics.json."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(40):  # held out: 9, 19, 29, 39
        path = folder / f"{index:02d}.png"
        if index in (9, 18, 39):
            path.write_bytes(b"")
        else:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    (folder / "metadata.jsonl").write_text('{"file_name": "00.png", "text": ["not", "a", "string"]}\n')
    data = DataConfig(source="folder", path=str(folder), image_size=16, max_bad_fraction=0.5)
    tokenizer = train_tokenizer(tokenizer_run(tmp_path / "tokenizer", data=data, steps=10, batch_size=4,
                                              num_workers=2, eval_images=8, sample_every=100))
    transformer = train_var(var_run(tmp_path / "var", tmp_path / "tokenizer" / "model", tiny_bert_dir, data=data,
                                    steps=2, batch_size=4, cache_images=64, eval_images=16))
    for result, run in ((tokenizer, "tokenizer"), (transformer, "var")):
        saved = json.loads((tmp_path / run / "metrics.json").read_text())
        assert saved["skipped_inputs"] == result.metrics["skipped_inputs"] == {"bad_metadata": 1, "empty": 3}, run
        assert saved["held_out_split"] == tokenizer.metrics["held_out_split"], run
    assert tokenizer.metrics["held_out_split"]["items"] == 4
