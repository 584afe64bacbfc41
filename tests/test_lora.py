"""LoRA fine-tuning (peft) of a tiny pipeline: only the adapter trains, it saves small and separate, resumes
bit-exactly, and what a fresh process samples from the saved adapter is what the run previewed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT_MAX_LENGTH
from PIL import Image

from nextscale.data import DataConfig
from nextscale.sampling.adapters import ADAPTER_WEIGHTS, load_adapter, lora_layers, merge_command
from nextscale.sampling.pipeline import load_pipeline
from nextscale.train.lora import LoraOptions
from nextscale.train.preview import PreviewConfig
from nextscale.train.var_loop import VarTrainConfig, train_var
from nextscale.train.var_objective import VarObjective
from nextscale.transformer import TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a man with a beard", "a woman with red hair")


def lora_run(output_dir: Path, pipeline: Path, text_encoder: Path, **overrides) -> VarTrainConfig:
    settings = dict(
        output_dir=str(output_dir), tokenizer=str(pipeline / "tokenizer"), init_from=str(pipeline),
        text_encoder=str(text_encoder), text_max_length=TINY_TEXT_MAX_LENGTH, model=TransformerConfig.preset("tiny"),
        data=DataConfig(image_size=16, synthetic_length=64), cache_images=64, steps=10, batch_size=8,
        learning_rate=1e-2, warmup_steps=2, mixed_precision="no", log_every=5, checkpoint_every=5, eval_images=16,
        tracker="none", lora=LoraOptions(rank=4, alpha=8.0),
        preview=PreviewConfig(every=10, prompts=PROMPTS, images_per_prompt=2))
    settings.update(overrides)
    return VarTrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pipeline_dir, tiny_bert_dir):
    output = tmp_path_factory.mktemp("lora") / "run"
    return output, train_var(lora_run(output, tiny_pipeline_dir, tiny_bert_dir))


def test_only_the_adapter_trains_and_it_saves_small_and_separate(trained, tiny_pipeline_dir):
    output, result = trained
    base = load_pipeline(tiny_pipeline_dir).transformer.state_dict()
    tuned = result.model.state_dict()
    for key, value in base.items():  # every base weight is where it was, under peft's base_layer names
        name = key if key in tuned else key.rsplit(".", 1)[0] + ".base_layer." + key.rsplit(".", 1)[1]
        assert torch.equal(tuned[name], value), key
    assert any(float(v.abs().sum()) > 0 for k, v in tuned.items() if "lora_B" in k)  # the adapter moved
    assert not (output / "model").exists() and not (output / "pipeline").exists()
    adapter = output / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["base"]["pipeline"] == str(tiny_pipeline_dir)
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size < 0.5 * (tiny_pipeline_dir / "transformer" /
                                                                "model.safetensors").stat().st_size
    assert 0 < result.metrics["adapter_fraction"] < 0.5


def test_resume_from_a_checkpoint_is_bit_exact(trained, tiny_pipeline_dir, tiny_bert_dir, tmp_path):
    output, result = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(output / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "step_10", ignore_errors=True)
    again = train_var(lora_run(resumed, tiny_pipeline_dir, tiny_bert_dir, resume="latest",
                               cache_dir=str(output / "cache")))
    assert again.metrics["resumed_at"] == [5]
    assert (resumed / "adapter" / ADAPTER_WEIGHTS).read_bytes() == (output / "adapter" / ADAPTER_WEIGHTS).read_bytes()
    assert again.metrics["held_out_loss"] == result.metrics["held_out_loss"]


FRESH = """
import json, sys
from pathlib import Path
from nextscale.data import DataConfig
from nextscale.data.split import evaluation_split
from nextscale.images import save_grid
from nextscale.sampling import generate
from nextscale.sampling.pipeline import load_pipeline
from nextscale.train.preview import PreviewConfig
from nextscale.train.var_objective import evaluate_held_out

pipeline_dir, adapter, out, prompts = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
pipe = load_pipeline(pipeline_dir, adapter=adapter)
preview = PreviewConfig(every=10, prompts=tuple(prompts), images_per_prompt=2)
rows = [p for p in prompts for _ in range(2)]
images = generate(pipe, rows, [i for _ in prompts for i in range(2)], preview.sampling).images
save_grid(images, out / "fresh.png", columns=2)
data = DataConfig(image_size=16, synthetic_length=64)
split = evaluation_split(data, None)
metrics = evaluate_held_out(pipe.transformer.eval(), pipe.tokenizer, pipe.text_encoder, split.evaluation, 16)
(out / "fresh.json").write_text(json.dumps(metrics))
"""


def test_a_fresh_process_samples_the_previews_and_recomputes_the_held_out_loss(trained, tiny_pipeline_dir, tmp_path):
    output, result = trained
    subprocess.run([sys.executable, "-c", FRESH, str(tiny_pipeline_dir), str(output / "adapter"), str(tmp_path),
                    json.dumps(PROMPTS)], check=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                                                     "PATH": "/usr/bin:/bin"})
    preview = np.asarray(Image.open(output / "previews" / "step_000010.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fresh.png")), preview)
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert fresh["held_out_loss"] == pytest.approx(result.metrics["held_out_loss"], abs=1e-6)
    # and sample.py --adapter runs on it
    subprocess.run([sys.executable, "sample.py", "--checkpoint", str(tiny_pipeline_dir), "--adapter",
                    str(output / "adapter"), "--adapter-scale", "0.5", "--prompt", PROMPTS[0], "--out",
                    str(tmp_path / "cli"), "--device", "cpu", "--no-progress"], check=True, cwd=ROOT,
                   env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert list((tmp_path / "cli").glob("0000-*.png"))


def logits(pipeline, codes: torch.Tensor) -> torch.Tensor:
    condition = pipeline.text_encoder.encode(list(PROMPTS)).as_dict()
    with torch.no_grad():
        return VarObjective(pipeline.transformer.eval(), pipeline.tokenizer, 0.0)(codes, condition)[1]


def test_merge_gives_the_adapters_logits_and_scale_zero_the_bases(trained, tiny_pipeline_dir, tmp_path):
    output, _ = trained
    codes = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0))
    adapted = load_pipeline(tiny_pipeline_dir, adapter=output / "adapter")
    merged_dir = merge_command(str(tiny_pipeline_dir), str(output / "adapter"), str(tmp_path / "merged"))
    merged = load_pipeline(merged_dir)
    torch.testing.assert_close(logits(merged, codes), logits(adapted, codes), atol=1e-5, rtol=1e-5)
    base = logits(load_pipeline(tiny_pipeline_dir), codes)
    assert not torch.allclose(base, logits(adapted, codes), atol=1e-4)
    adapted.set_adapter_scale(0.0)
    torch.testing.assert_close(logits(adapted, codes), base)


def test_an_adapter_of_another_base_is_refused_in_one_line(trained, write_tiny_pipeline, tiny_pipeline_dir,
                                                           tmp_path):
    output, _ = trained
    deeper = load_pipeline(write_tiny_pipeline(tmp_path / "deeper", transformer_overrides={"depth": 3}))
    with pytest.raises(ValueError, match=r"fits another base transformer .*depth: 2 there, 3 here") as error:
        load_adapter(deeper.transformer, output / "adapter")
    assert "\n" not in str(error.value)
    other = load_pipeline(tiny_pipeline_dir)
    with torch.no_grad():
        other.transformer.head.weight.add_(1e-2)
    with pytest.raises(ValueError, match="same architecture, other weights"):
        other.load_adapter(output / "adapter")
    proc = subprocess.run([sys.executable, "sample.py", "--checkpoint", str(tmp_path / "deeper"), "--adapter",
                           str(output / "adapter"), "--prompt", "a man", "--out", str(tmp_path / "x"), "--device",
                           "cpu"], cwd=ROOT, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "depth: 2 there, 3 here" in proc.stderr


def test_the_web_uis_model_registry_loads_a_pipeline_with_an_adapter(trained, tiny_pipeline_dir):
    from nextscale.ui.models import ModelRegistry, split_adapter, with_adapter

    output, _ = trained
    name = with_adapter(str(tiny_pipeline_dir), str(output / "adapter"), 0.5)
    assert split_adapter(name) == (str(tiny_pipeline_dir), str((output / "adapter").resolve()), 0.5)
    model = ModelRegistry("cpu", "float32", 1, 2).get(name)
    assert model.adapter == str((output / "adapter").resolve()) and model.name == name
    assert "at scale 0.5" in model.info()["adapter"]
    assert {m.scaling["default"] for _, m in lora_layers(model.pipeline.transformer)} == {0.5 * 8.0 / 4}


def test_the_merge_command_reports_a_missing_base_in_one_line(tmp_path):
    """The merge command's mistakes end as every command's do: one `error:` line, exit 2."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nextscale.sampling.adapters", "merge", "--pipeline",
                           str(tmp_path / "missing"), "--adapter", str(tmp_path / "adapter"), "--out",
                           str(tmp_path / "merged")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and not (tmp_path / "merged").exists()
