"""Teaching the bundled model a new concept (the hat): adherence to it and to every old attribute, FD.

    python -m experiments.lora_concept --run runs/lora/r16 --judge runs/judge-hat/model --out r16.json
    python -m experiments.lora_concept --judge runs/judge-hat/model --out base.json   # the base model

`--run` is a train_var.py output directory: its adapter/ goes on the base pipeline, or its pipeline/ (a
full fine-tune) is loaded instead. The judge reads the hat too (`train_judge --concepts hat`); a judge
checkpoint directory (checkpoints/step_N) is read as well. Old attributes: one prompt per value of each,
as the adherence evaluation's single-attribute prompts; the new one: "a person, wearing a <colour> hat".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from nextscale.eval.fid import frechet_distance, frechet_distance_noise
from nextscale.images import from_uint8, to_uint8
from nextscale.portraits.adherence import (
    EvaluationConfig,
    PromptSpec,
    adherence,
    judge_images,
    prompt_set,
    render_real,
    sample_prompts,
)
from nextscale.portraits.captions import caption_from_attributes
from nextscale.portraits.concepts import CONCEPTS, with_concepts
from nextscale.portraits.judge import AttributeJudge, JudgeConfig, with_concept_heads
from nextscale.sampling.pipeline import DEMO_PIPELINE, load_pipeline


def load_judge(path: str) -> AttributeJudge:
    """A saved judge, or the weights of a judge training's checkpoint (with the hat head)."""
    directory = Path(path)
    if (directory / "config.json").is_file():
        return AttributeJudge.from_pretrained(directory).eval()
    judge = AttributeJudge(with_concept_heads(JudgeConfig(), ("hat",)))
    judge.load_state_dict(load_file(str(directory / "model.safetensors")))
    return judge.eval()


def hat_prompts() -> list[PromptSpec]:
    return [PromptSpec(with_concepts(caption_from_attributes({}), {"hat": colour}), {"hat": colour})
            for colour in CONCEPTS["hat"][1:]]


def open_run(run: str | None, base: str | None):
    if run is None:
        return load_pipeline(base)
    run_dir = Path(run)
    if (run_dir / "adapter").is_dir():
        return load_pipeline(base, adapter=run_dir / "adapter")
    return load_pipeline(run_dir / "pipeline")


@torch.no_grad()
def evaluate(run: str | None, base: str | None, judge_path: str, per_prompt: int, cfg_scale: float,
             seed: int, old_judge_path: str, images_file: Path | None = None) -> dict:
    """Old attributes and FD through the bundled judge (`old_judge_path`), the hat through the hat judge. The
    samples are kept in `images_file` (uint8) and judged again from there when it exists."""
    judge, old_judge = load_judge(judge_path), load_judge(old_judge_path)
    singles, _ = prompt_set(0, seed)
    hats = hat_prompts()
    seconds = None
    if images_file is not None and images_file.is_file():
        saved = torch.load(images_file)
        old_images, hat_images = from_uint8(saved["old"]), from_uint8(saved["hat"])
    else:
        pipeline, config = open_run(run, base), EvaluationConfig(top_k=None, top_p=1.0, batch_size=32)
        start = time.perf_counter()
        old_images = sample_prompts(pipeline, [s.text for s in singles for _ in range(per_prompt)], config,
                                    cfg_scale, seed)
        hat_images = sample_prompts(pipeline, [s.text for s in hats for _ in range(2 * per_prompt)], config,
                                    cfg_scale, seed)
        seconds = time.perf_counter() - start
        if images_file is not None:
            torch.save({"old": to_uint8(old_images), "hat": to_uint8(hat_images)}, images_file)
    old_pred, old_features = judge_images(old_judge, old_images)
    hat_pred, _ = judge_images(judge, hat_images)
    real_features = judge_images(old_judge, render_real(singles, per_prompt, 64, seed + 1))[1]
    hat_index = judge.config.attribute_names.index("hat")
    old = adherence(old_pred, singles, per_prompt, old_judge)
    new = adherence(hat_pred, hats, 2 * per_prompt, judge)
    return {
        "judge": judge_path, "run": run, "base": str(base or DEMO_PIPELINE), "cfg_scale": cfg_scale,
        "images_per_prompt": per_prompt,
        "old": old["per_attribute"], "old_mean": old["mean"], "hat": new["per_attribute"]["hat"],
        "hat_on_old_prompts": float((judge_images(judge, old_images)[0][:, hat_index] != 0).float().mean()),
        "frechet_distance": frechet_distance(old_features, real_features),
        "frechet_distance_noise": frechet_distance_noise(old_features, real_features, per_prompt, seed=seed),
        "sampling_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a train_var.py output directory (adapter/ or pipeline/); none: the base")
    parser.add_argument("--base", help="the base pipeline (default: the bundled demo)")
    parser.add_argument("--judge", required=True, help="a judge with a hat head, or its training checkpoint")
    parser.add_argument("--old-judge", default=str(DEMO_PIPELINE / "judge"), help="judge of the old attributes")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, help="keep the samples here; judge them again from here if present")
    args = parser.parse_args()
    report = evaluate(args.run, args.base, args.judge, args.images_per_prompt, args.cfg, args.seed, args.old_judge,
                      args.images)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
