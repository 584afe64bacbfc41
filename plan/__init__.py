"""The training planner (`python -m nextscale.plan`): what a transformer training costs before it runs.

Parameters, tokens and FLOPs per image (the benchmarks' FLOP counter, `nextscale.transformer.flops`),
memory per device for DDP and FSDP with and without activation checkpointing (`memory`), the largest
micro-batch that fits and the hours at a stated utilisation (`estimate`); `measure` checks the memory
estimate against the peak of real training steps. docs/scale-out.md shows it on every recipe.
"""
