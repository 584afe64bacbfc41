"""The recipes in recipes/: each loads through the one resolver for both trainings (its values land in the
parsed config, the command line on top), the demo's reproduces the bundle, and a shrunk copy of each trains
a few steps of both stages offline (tiny random DINOv2, CLIP text encoder and ResNet saved locally)."""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_clip
from PIL import Image

from nextscale.checkpoint import drop_removed_options
from nextscale.cli_help import format_help
from nextscale.errors import parse
from nextscale.tokenizer import TokenizerConfig
from nextscale.train.errors import run_cli
from nextscale.train.presets import load_recipe, parser_arguments, resolve
from nextscale.train.tokenizer_loop import TokenizerTrainConfig, train_tokenizer
from nextscale.train.var_loop import VarTrainConfig, train_var
from nextscale.transformer import TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TRAININGS = {"tokenizer": (TokenizerTrainConfig, train_tokenizer), "var": (VarTrainConfig, train_var)}
WORDS = ["a", "face", "man", "woman", "smiling", "with", "glasses", "red", "hair", "photo"]


def parsed(section: str, argv: list[str]):
    """What the training's command line parses `argv` into (resolver, then tyro on top)."""
    config_class = TRAININGS[section][0]
    return parse(config_class, parser_arguments(argv), resolve(config_class, argv))


def leaves(values: dict, prefix: tuple[str, ...] = ()):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def test_the_bundled_recipes_are_there():
    assert {path.stem for path in RECIPES} >= {"portraits-64", "imagenet-256-d16", "faces-256", "folder-128"}


@pytest.mark.parametrize("section", TRAININGS)
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_value_of_a_recipe_lands_in_the_parsed_config(recipe, section):
    values = load_recipe(recipe)[section]
    assert values, f"{recipe.name} has no {section}: section"
    config = parsed(section, ["--config", str(recipe)])
    for path, value in leaves(values):
        got = functools.reduce(getattr, path, config)
        assert got == (tuple(value) if isinstance(value, list) else value), ".".join(path)
    # the command line on top of the recipe; --help shows the recipe's values as the defaults
    assert parsed(section, ["--config", str(recipe), "--steps", "7"]).steps == 7
    text = format_help(TRAININGS[section][0], config, "train.py")
    assert f"--steps INT               Optimiser steps. (default: {values['steps']})" in text


def test_imagenet_d16_is_vars_recipe():
    recipe = str(ROOT / "recipes" / "imagenet-256-d16.yaml")
    tokenizer, var = parsed("tokenizer", ["--config", recipe]), parsed("var", ["--config", recipe])
    assert tokenizer.model.image_size // tokenizer.model.latent_size == 16  # VQVAE f16
    assert (tokenizer.model.vocab_size, tokenizer.model.latent_dim) == (4096, 32)
    assert tokenizer.model.scale_sizes == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert tokenizer.data.source == var.data.source == "class-folder" and var.condition == "class"
    shape = (var.model.depth, var.model.width, var.model.num_heads, var.model.qk_norm, var.model.key_bias)
    var_d16 = TransformerConfig.var(16)
    assert shape == (16, 1024, 16, True, False) == (var_d16.depth, var_d16.width, var_d16.num_heads,
                                                     var_d16.qk_norm, var_d16.key_bias)
    assert var.model.drop_path == pytest.approx(var_d16.drop_path)
    assert var.batch_size * 8 == 768 and var.learning_rate == pytest.approx(1e-4 * 768 / 256)
    assert (var.weight_decay, var.cond_drop, var.grad_clip, var.betas) == (0.05, 0.1, 2.0, (0.9, 0.95))
    assert var.steps == 200 * round(1_281_167 / 768) and var.warmup_steps == 4 * round(1_281_167 / 768)


def test_faces_and_folder_recipes():
    faces = str(ROOT / "recipes" / "faces-256.yaml")
    tokenizer, var = parsed("tokenizer", ["--config", faces]), parsed("var", ["--config", faces])
    assert tokenizer.alignment.teacher == "facebook/dinov2-base" and tokenizer.data.source == "folder"
    assert var.text_encoder == "openai/clip-vit-large-patch14" and var.model.cross_attention
    assert (var.model.depth, var.model.width, var.model.num_heads) == (16, 1024, 16)
    folder = str(ROOT / "recipes" / "folder-128.yaml")
    assert parsed("tokenizer", ["--config", folder]).model.image_size == 128
    assert parsed("var", ["--config", folder]).data.image_size == 128


def test_the_portraits_recipe_is_the_bundle():
    """Its architecture and conditioning are the bundle's configs; its stages, run in order, end in the two
    runs that checkpoints/demo/metrics.json names, with the bundle's architectures."""
    demo, recipe = ROOT / "checkpoints" / "demo", ROOT / "recipes" / "portraits-64.yaml"
    bundle_tokenizer = json.loads((demo / "tokenizer" / "config.json").read_text())
    bundle_tokenizer = drop_removed_options(TokenizerConfig, {k: v for k, v in bundle_tokenizer.items()
                                                              if k != "class"})
    bundle_transformer = {k: v for k, v in json.loads((demo / "transformer" / "config.json").read_text()).items()
                          if k != "class"}
    pipeline = json.loads((demo / "pipeline.json").read_text())
    metrics = json.loads((demo / "metrics.json").read_text())

    def as_json(config) -> dict:
        return json.loads(json.dumps(config.__dict__, default=list))

    tokenizer, var = parsed("tokenizer", ["--config", str(recipe)]), parsed("var", ["--config", str(recipe)])
    assert as_json(tokenizer.model) == bundle_tokenizer
    assert as_json(var.model) == bundle_transformer
    assert (var.text_encoder, var.text_max_length) == (pipeline["text_encoder"], pipeline["text_max_length"])
    assert tokenizer.model == TokenizerConfig() and var.model.depth == TransformerConfig.preset("demo").depth
    stages = load_recipe_notes(recipe)["stages"]
    for section, name in (("tokenizer", "tokenizer"), ("var", "transformer")):
        runs = [parsed(section, ["--config", str(recipe), *shlex.split(line)]) for line in stages[section]]
        last = runs[-1]
        assert (last.steps, last.init_from) == (metrics[name]["train_steps"], metrics[name]["init_from"])
        assert as_json(last.model) == (bundle_tokenizer if section == "tokenizer" else bundle_transformer)
        outputs = [run.output_dir for run in runs]
        assert all(run.init_from is None or run.init_from.split("/model")[0] in outputs[:index]
                   or run.init_from.startswith("runs/demo_") for index, run in enumerate(runs))


def load_recipe_notes(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["notes"]


# ---------------------------------------------------------------------------------------------------------
# Shrunk copies that train: the recipe, then the command line's tiny sizes on top


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny local stand-ins for what the recipes download, and tiny data of both layouts."""
    from transformers import Dinov2Config, Dinov2Model, ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("recipe-assets")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=4, image_size=16)).save_pretrained(root / "dino")
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(root / "resnet")
    write_tiny_clip(root / "clip", WORDS)
    generator = torch.Generator().manual_seed(0)
    folder, classes = root / "folder", root / "classes"
    folder.mkdir()
    lines = []
    for index in range(20):
        pixels = (torch.rand(3, generator=generator) * 255).int().tolist()
        Image.new("RGB", (36, 32), tuple(pixels)).save(folder / f"{index:02d}.png")
        caption = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(4))
        lines.append(json.dumps({"file_name": f"{index:02d}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for label, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        (classes / f"n{label:08d}").mkdir(parents=True)
        for index in range(6):
            Image.new("RGB", (32, 32), tuple(max(0, c - 20 * index) for c in colour)).save(
                classes / f"n{label:08d}" / f"{index}.png")
    return {"dino": root / "dino", "resnet": root / "resnet", "clip": root / "clip", "folder": folder,
            "classes": classes}


SMALL = ["--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--eval-images", "4", "--log-every", "1",
         "--checkpoint-every", "100", "--tracker", "none", "--mixed-precision", "no"]
SMALL_TOKENIZER = ["--image-size", "32", "--model.encoder-channels", "16", "--model.decoder-channels", "16",
                   "--model.norm-groups", "8", "--model.vocab-size", "64", "--model.latent-dim", "8",
                   "--sample-every", "100"]
SMALL_VAR = ["--model.depth", "1", "--model.width", "32", "--model.num-heads", "2", "--cache-images", "8",
             "--preview.every", "0"]


def recipe_overrides(name: str, assets: dict[str, Path]) -> dict[str, list[str]]:
    """Per recipe: the tiny stand-ins and data for its tokenizer and transformer stages."""
    folder, classes, clip = str(assets["folder"]), str(assets["classes"]), str(assets["clip"])
    perceptual = ["--perceptual.model", str(assets["resnet"]), "--perceptual.resolution", "32"]
    return {
        "portraits-64": {"tokenizer": ["--data.synthetic-length", "16"],
                         "var": ["--data.synthetic-length", "16", "--text-encoder", clip]},
        "imagenet-256-d16": {"tokenizer": ["--data.path", classes, *perceptual],
                             "var": ["--data.path", classes, "--eval-data.path", classes]},
        "faces-256": {"tokenizer": ["--data.path", folder, "--alignment.teacher", str(assets["dino"]),
                                    "--alignment.teacher-resolution", "16", "--alignment.projection-width", "16",
                                    *perceptual],
                      "var": ["--data.path", folder, "--text-encoder", clip]},
        "folder-128": {"tokenizer": ["--data.path", folder], "var": ["--data.path", folder, "--text-encoder", clip]},
    }[name]


@pytest.mark.filterwarnings("ignore:.*exceed max_length")
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_a_shrunk_copy_of_every_recipe_trains_both_stages(recipe, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = recipe_overrides(recipe.stem, assets)
    tokenizer_dir = tmp_path / "tokenizer"
    argv = ["--config", str(recipe), *SMALL, *SMALL_TOKENIZER, *overrides["tokenizer"],
            "--output-dir", str(tokenizer_dir)]
    run_cli(TokenizerTrainConfig, train_tokenizer, argv)
    trained = json.loads((tokenizer_dir / "train_config.json").read_text())
    values = load_recipe(recipe)["tokenizer"]
    assert trained["model"]["encoder_res_blocks"] == values.get("model", {}).get("encoder_res_blocks", 1)
    assert trained["alignment"]["teacher"] == (str(assets["dino"]) if recipe.stem == "faces-256" else "none")
    argv = ["--config", str(recipe), *SMALL, *SMALL_VAR, *overrides["var"], "--tokenizer",
            str(tokenizer_dir / "model"), "--output-dir", str(tmp_path / "var")]
    result = run_cli(VarTrainConfig, train_var, argv)
    trained = json.loads((tmp_path / "var" / "train_config.json").read_text())
    assert trained["data"]["image_size"] == 32  # from the tokenizer, over the recipe's size
    assert (trained["model"]["depth"], trained["model"]["width"], trained["model"]["num_heads"]) == (1, 32, 2)
    assert trained["condition"] == load_recipe(recipe)["var"].get("condition", "text")
    assert (tmp_path / "var" / "pipeline" / "pipeline.json").is_file() and result.metrics["train_steps"] == 2
