"""The planner's printed plan."""

from __future__ import annotations

from nextscale.plan.estimate import Plan

GB = 1e9


def flops_text(flops: float) -> str:
    return f"{flops / 1e12:.3f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP"


def hours_text(hours: float) -> str:
    if hours >= 1:
        return f"{hours:,.1f} h ({hours / 24:.2f} days)"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def describe_model(plan: Plan) -> str:
    shape = plan.model.shape
    kind = (f"class-conditional ({shape.num_classes} classes)" if shape.class_conditional else
            f"text-conditioned (width {shape.text_width}, {plan.model.text_length} tokens"
            + (", cross-attention)" if shape.cross_attention else ", pooled only)"))
    extras = [name for name, on in (("qk-norm", shape.qk_norm), ("layout context", shape.layout_context)) if on]
    return (f"depth {shape.depth}, width {shape.width}, {shape.num_heads} heads, {kind}"
            + (f", {', '.join(extras)}" if extras else ""))


def columns(plan: Plan) -> list[tuple[str, tuple[str, bool]]]:
    names = {"single": "1 GPU", "ddp": "DDP", "fsdp": f"FSDP/{plan.config.gpus}"}
    return [(names[strategy] + (" +ckpt" if checkpointing else ""), (strategy, checkpointing))
            for strategy, checkpointing in plan.memory]


def memory_table(plan: Plan) -> list[str]:
    config = plan.config
    heads = columns(plan)
    rows = [
        ("weights (fp32)", lambda m: m.weights),
        ("gradients (fp32)", lambda m: m.gradients),
        ("optimizer states (AdamW, fp32)", lambda m: m.optimizer),
        ("frozen tokenizer + text encoder", lambda m: m.frozen),
        ("DDP buckets | FSDP gathered blocks", lambda m: m.buffers),
        ("activations (saved + recomputed)", lambda m: m.activations.saved + m.activations.recomputed),
        ("logits (4 at the peak)", lambda m: 4 * m.activations.logits),
        ("peak", lambda m: m.peak),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"memory per device at micro-batch {config.batch_size}, {describe_precision(plan)} (GB):",
             " " * width + "".join(f"{head:>14}" for head, _ in heads)]
    for name, value in rows:
        lines.append(f"  {name:<{width - 2}}" + "".join(f"{value(plan.memory[key]) / GB:14.2f}" for _, key in heads))
    usable = plan.usable_bytes
    lines.append(f"  {'fits in ' + format(usable / GB, '.1f') + ' GB':<{width - 2}}"
                 + "".join(f"{'yes' if plan.memory[key].peak <= usable else 'no':>14}" for _, key in heads))
    lines.append(f"  {'largest micro-batch that fits':<{width - 2}}"
                 + "".join(f"{plan.largest_batch[key]:>14}" for _, key in heads))
    return lines


def describe_precision(plan: Plan) -> str:
    precision = plan.config.precision
    return "fp32" if precision == "no" else f"{precision} autocast"


def format_plan(plan: Plan, source: str) -> str:
    config, model = plan.config, plan.model
    shape = model.shape
    frozen = f"{plan.tokenizer_parameters / 1e6:.1f}M frozen tokenizer"
    if not shape.class_conditional:
        text = model.text_parameters
        frozen += (f" + {text / 1e6:.1f}M text encoder" if text else
                   f" + the text encoder {config.text_encoder} (not counted)")
    if config.images is not None:
        run = f"{config.trained_images:,.0f} images ({config.epochs:g} epochs of {config.images:,})"
    else:
        run = f"{config.trained_images:,.0f} images ({config.steps:,} steps of {config.global_batch:,})"
    hours, recomputed = plan.hours(), plan.hours(checkpointing=True)
    lines = [
        f"plan of {source}",
        f"model: {describe_model(plan)}",
        f"tokenizer: from {model.tokenizer_source}",
        f"parameters: {plan.parameters.total / 1e6:.1f}M trained ({plan.parameters.total:,}); {frozen}",
        f"tokens per image: {shape.num_tokens} (scales {' '.join(map(str, shape.scale_sizes))})",
        f"training FLOPs per image: {flops_text(plan.train_flops)} (forward + backward; activation "
        f"checkpointing adds {flops_text(plan.recompute_flops)})",
        f"sampling FLOPs per image: {flops_text(plan.sampling_flops)} (KV cache, guidance on every scale)",
        f"global batch: {config.global_batch:,} = {config.batch_size} per GPU x {config.gpus} "
        f"GPU{'s' if config.gpus > 1 else ''} x "
        f"{config.gradient_accumulation} accumulated",
        f"run: {run}",
        "",
        *memory_table(plan),
        "",
        f"hours at {config.mfu:.0%} MFU of {config.gpus} x {config.gpu_tflops:g} TFLOP/s: {hours_text(hours)}, "
        f"{hours * config.gpus:,.1f} GPU-hours; with activation checkpointing {hours_text(recomputed)}",
    ]
    return "\n".join(lines)
