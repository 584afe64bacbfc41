"""`python -m nextscale.plan`: plan a transformer training before running it.

    python -m nextscale.plan --config recipes/imagenet-256-d16.yaml --gpus 16 --images 1281167 --epochs 200
    python -m nextscale.plan --preset var-d20 --condition class --data.source class-folder --batch-size 32
    python -m nextscale.plan --model.depth 12 --gpus 1 --gpu-memory-gb 24 --gpu-tflops 165

Every train_var.py option applies; `--help` lists the planner's own first. A mistake is one `error:` line.
"""

from __future__ import annotations

import sys

from nextscale.plan.config import PlanConfig, planned_model
from nextscale.plan.estimate import make_plan
from nextscale.plan.report import format_plan


def describe_source(argv: list[str]) -> str:
    from nextscale.train.presets import option_value

    parts = [f"{option} {value}" for option in ("--config", "--preset")
             if (value := option_value(argv, option)) is not None]
    return ", ".join(parts) if parts else "the command line's options (train_var.py's defaults below them)"


def main(argv: list[str] | None = None) -> None:
    from nextscale.train.errors import run_cli

    given = list(sys.argv[1:] if argv is None else argv)
    options = [arg for arg in given if arg != "--debug"]
    run_cli(PlanConfig, lambda config: print(format_plan(make_plan(config, planned_model(config, options)),
                                                         describe_source(options))), given)


if __name__ == "__main__":
    main()
