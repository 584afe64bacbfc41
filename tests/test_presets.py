"""Sizes given once: --image-size picks a size preset, train_var.py takes the size from its tokenizer,
held-out data is one plain option; every mistake of the issue is one line."""

from __future__ import annotations

import pytest

from nextscale.data import DataConfig, HeldOutConfig
from nextscale.errors import parse
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.config import SIZE_PRESETS, size_preset, suggested_scale_sizes
from nextscale.train.errors import run_cli
from nextscale.train.presets import check_tokenizer_size, option_value, tokenizer_defaults, var_defaults
from nextscale.train.tokenizer_loop import TokenizerTrainConfig
from nextscale.train.var_loop import VarTrainConfig


def tokenizer_args(argv: list[str]) -> TokenizerTrainConfig:
    return parse(TokenizerTrainConfig, argv, tokenizer_defaults(argv))


def error_line(capsys: pytest.CaptureFixture[str], config_class: type, argv: list[str], defaults) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(config_class, lambda config: pytest.fail("the run must not start"), argv, defaults=defaults)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_every_preset_builds_a_tokenizer_of_its_size():
    assert SIZE_PRESETS[256].scale_sizes == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's schedule
    for size in SIZE_PRESETS:
        config = TokenizerConfig.for_image_size(size)
        assert config.image_size == size and config.scale_sizes[-1] == config.latent_size
    assert TokenizerConfig.for_image_size(96).scale_sizes == (1, 2, 3, 4, 6, 8, 10, 12)  # derived: latent 12
    assert suggested_scale_sizes(16) == SIZE_PRESETS[256].scale_sizes
    with pytest.raises(ValueError, match="no size preset fits 33 px"):
        size_preset(33)


def test_one_image_size_sets_data_model_and_schedule():
    config = tokenizer_args(["--image-size", "32"])
    assert config.data.image_size == config.model.image_size == 32
    assert config.model.channel_mult == (1, 2, 4) and config.model.scale_sizes == (1, 2, 3, 4, 6, 8)
    overridden = tokenizer_args(["--image-size=256", "--model.scale-sizes", "1", "2", "4", "8", "16"])
    assert overridden.model.channel_mult == (1, 1, 2, 2, 4) and overridden.model.scale_sizes == (1, 2, 4, 8, 16)
    assert tokenizer_args([]).model == TokenizerConfig()  # no size: the 64 px demo preset
    assert option_value(["--image-size", "32", "--image-size=64"], "--image-size") == "64"


def test_the_demo_preset_aligns_with_the_bundled_teacher_and_other_data_does_not(capsys, tmp_path):
    from nextscale.tokenizer.losses.alignment import AlignmentConfig
    from nextscale.train.tokenizer_loop import DEMO_TEACHER, demo_alignment

    demo = demo_alignment()
    assert (demo.teacher, demo.weight, demo.scales, demo.teacher_resolution) == (str(DEMO_TEACHER), 0.1, "last", 64)
    assert (DEMO_TEACHER / "config.json").is_file() and (DEMO_TEACHER / "model.safetensors").is_file()
    assert tokenizer_args([]).alignment == demo
    assert tokenizer_args(["--image-size", "64"]).alignment == demo  # the demo's size said aloud
    for argv in (["--image-size", "32"], ["--data.source", "folder", "--data.path", str(tmp_path)]):
        assert tokenizer_args(argv).alignment == AlignmentConfig(teacher="none"), argv  # off, DINOv2's settings
    chosen = tokenizer_args(["--image-size", "256", "--alignment.teacher", "facebook/dinov2-base"]).alignment
    assert chosen == AlignmentConfig(teacher="facebook/dinov2-base")
    line = error_line(capsys, TokenizerTrainConfig, ["--data.source", "folder", "--data.path", str(tmp_path),
                                                     "--alignment.teacher", str(DEMO_TEACHER)], tokenizer_defaults)
    assert "knows only the synthetic portraits" in line and "--alignment.teacher none" in line
    # built in Python, the same rule: the preset's alignment for the demo's data, off for any other
    assert TokenizerTrainConfig().alignment == demo
    assert TokenizerTrainConfig(data=DataConfig(image_size=32), model=TokenizerConfig.for_image_size(32),
                                ).alignment == AlignmentConfig(teacher="none")


def test_size_mistakes_are_one_line_naming_the_fix(capsys):
    # the 64 px schedule at 32 px: the error names the preset and the options that fit
    line = error_line(capsys, TokenizerTrainConfig, ["--model.image-size", "32", "--data.image-size", "32"],
                      tokenizer_defaults)
    assert "--image-size 32 alone" in line and "--model.channel-mult 1 2 4" in line
    assert "dropping a --model.channel-mult level" in line
    line = error_line(capsys, TokenizerTrainConfig, ["--data.image-size", "32"], tokenizer_defaults)
    assert "pass --image-size N alone" in line
    line = error_line(capsys, TokenizerTrainConfig, ["--image-size", "32", "--data.image-size", "64"],
                      tokenizer_defaults)
    assert "--image-size 32 sets the data and model sizes" in line
    line = error_line(capsys, TokenizerTrainConfig, ["--image-size", "33"], tokenizer_defaults)
    assert "no size preset fits 33 px" in line
    line = error_line(capsys, TokenizerTrainConfig, ["--image-size", "32", "--model.channel-mult", "1", "2", "2", "4"],
                      tokenizer_defaults)
    assert "must equal the latent side 4" in line and "--model.channel-mult 1 2 4" in line


def test_held_out_data_is_a_plain_option_checked_before_training(capsys, tmp_path):
    config = tokenizer_args(["--image-size", "32", "--data.source", "folder", "--data.path", str(tmp_path),
                             "--eval-data.path", str(tmp_path / "held-out")])
    held_out = config.eval_data.resolve(config.data)
    assert held_out is not None and held_out.path == str(tmp_path / "held-out") and held_out.image_size == 32
    assert HeldOutConfig().resolve(config.data) is None
    line = error_line(capsys, TokenizerTrainConfig, ["--eval-data.source", "folder"], tokenizer_defaults)
    assert "--eval-data: source='folder' needs a path" in line
    line = error_line(capsys, VarTrainConfig, ["--eval-data.source", "webdataset"], var_defaults)
    assert "--eval-data: source='webdataset' needs a path" in line


def test_the_transformer_training_takes_the_image_size_from_its_tokenizer(capsys, tmp_path):
    from conftest import tiny_tokenizer_config

    MultiScaleVQVAE(tiny_tokenizer_config()).save_pretrained(tmp_path / "tokenizer")  # 16 px
    argv = ["--tokenizer", str(tmp_path / "tokenizer"), "--data.source", "folder", "--data.path", str(tmp_path)]
    config = parse(VarTrainConfig, argv, var_defaults(argv))
    assert config.data.image_size == 16
    assert var_defaults(["--tokenizer", str(tmp_path / "missing")]) is None  # reported when it loads
    with pytest.raises(ValueError, match="the tokenizer works at 16 px but --data.image-size is 64: drop"):
        check_tokenizer_size(DataConfig(), 16)


def var_args(argv: list[str]) -> VarTrainConfig:
    from nextscale.train.presets import parser_arguments

    return parse(VarTrainConfig, parser_arguments(argv), var_defaults(argv))


def tokenizer_command(argv: list[str]) -> TokenizerTrainConfig:
    """`tokenizer_args` as the script parses: --preset and --config read by the resolver alone."""
    from nextscale.train.presets import parser_arguments

    return parse(TokenizerTrainConfig, parser_arguments(argv), tokenizer_defaults(argv))


def test_one_depth_gives_vars_width_and_heads_unless_they_are_given():
    """--model.depth D: width 64 * D and D heads of 64 (VAR's rule), each unless given; the presets var-dN say
    all of VAR's shape; a depth equal to the one it replaces changes nothing (the demo stays the demo)."""
    from nextscale.transformer import TransformerConfig

    def shape(argv: list[str]) -> tuple[int, int, int]:
        model = var_args(argv).model
        return model.depth, model.width, model.num_heads

    assert shape(["--model.depth", "16"]) == (16, 1024, 16)
    assert shape(["--model.depth=20", "--model.width", "512"]) == (20, 512, 8)  # heads of 64
    assert shape(["--model.depth", "16", "--model.num-heads", "8"]) == (16, 1024, 8)
    assert shape(["--model.depth", "6"]) == shape([]) == (6, 256, 4) and var_defaults(["--model.depth", "6"]) is None
    var_d20 = TransformerConfig.var(20)
    model = var_args(["--preset", "var-d20"]).model
    assert (model.depth, model.width, model.num_heads, model.drop_path, model.qk_norm, model.key_bias) == (
        var_d20.depth, var_d20.width, var_d20.num_heads, var_d20.drop_path, var_d20.qk_norm, var_d20.key_bias)
    assert shape(["--preset", "var-d16", "--model.depth", "24"]) == (24, 1536, 24)
    assert TransformerConfig(depth=16).width == TransformerConfig().width  # the rule is the command line's alone
    tokenizer = tokenizer_command(["--preset", "var-d16"])
    model = tokenizer.model
    assert (model.image_size, model.vocab_size, model.encoder_channels) == (256, 4096, 160)
    assert tokenizer.alignment.teacher == "none"  # not the demo's data: the demo teacher is off


def test_preset_then_recipe_then_the_command_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("tokenizer:\n  steps: 5\n  learning-rate: 3e-4\n  model.vocab_size: 512\n"
                      "  data: {source: folder, path: /images}\nvar:\n  model: {depth: 8}\nnotes: ignored\n")
    argv = ["--preset", "var-d16", "--config", str(recipe), "--model.latent-dim", "16"]
    config = tokenizer_command(argv)
    assert (config.steps, config.learning_rate, config.model.vocab_size) == (5, 3e-4, 512)  # the recipe's
    assert (config.model.encoder_channels, config.model.latent_dim) == (160, 16)  # the preset's, the command line's
    assert config.data.path == "/images" and config.alignment.teacher == "none"
    assert var_args(["--config", str(recipe)]).model.width == 512  # depth 8 in the recipe: VAR's width
    for text, message in [("tokenizer:\n  stepz: 5\n", "tokenizer.stepz is not an option (did you mean tokenizer."),
                          ("tokenizer:\n  steps: many\n", 'steps is "many", expected an integer'),
                          ("tokenizer:\n  model: 3\n", "model holds options"),
                          ("var:\n  steps: 5\n", "has no tokenizer: section"),
                          ("tokenizers: {}\n", "unknown top-level keys ['tokenizers']"),
                          ("tokenizer: [\n", "is not valid YAML")]:
        recipe.write_text(text)
        assert message in error_line(capsys, TokenizerTrainConfig, ["--config", str(recipe)], tokenizer_defaults)
    assert "unknown; choose from demo, var-d16" in error_line(capsys, TokenizerTrainConfig, ["--preset", "d16"],
                                                              tokenizer_defaults)
    assert "no such recipe file" in error_line(capsys, TokenizerTrainConfig, ["--config", str(tmp_path / "none")],
                                                tokenizer_defaults)


def test_resume_takes_the_runs_saved_config_as_its_bottom_layer(tmp_path):
    """--resume with an output directory that holds train_config.json: its values are the defaults (under
    the preset, the recipe and the command line), keys it has that the config no longer has are dropped."""
    import dataclasses
    import json

    from nextscale.transformer import TransformerConfig

    saved = TokenizerTrainConfig(output_dir=str(tmp_path), image_size=32, model=TokenizerConfig.for_image_size(
        32, vocab_size=128), data=DataConfig(image_size=32, synthetic_length=99), steps=40)
    old = {**dataclasses.asdict(saved), "mixed_precision_used": "no", "a_removed_option": 1}
    old["model"]["null_code"] = False  # a removed tokenizer option, at its old default
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    resumed = tokenizer_args(["--resume", "latest", "--output-dir", str(tmp_path), "--steps", "80"])
    assert dataclasses.replace(resumed, steps=40, resume=None) == saved and resumed.steps == 80
    assert tokenizer_args(["--output-dir", str(tmp_path)]).model == TokenizerConfig()  # a fresh run: not read
    var = VarTrainConfig(output_dir=str(tmp_path / "var"), model=TransformerConfig(depth=2, width=256, num_heads=4))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "train_config.json").write_text(json.dumps(dataclasses.asdict(var)))
    argv = ["--resume", "latest", "--output-dir", str(tmp_path / "var"), "--model.depth", "2"]
    assert var_args(argv).model == var.model  # the run's own width, not the one --model.depth 2 implies
