"""The suite's printed table and its plot (time vs tokens; the equal-backbone comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_table(results: dict[str, Any]) -> str:
    """Every figure of `results` as plain-text tables."""
    machine = results["machine"]
    lines = [
        f"== {machine['device']}, {machine['threads']} threads, torch {machine['torch']}, load average "
        f"{machine['load_average_start']:.1f} -> {machine.get('load_average_end', float('nan')):.1f} "
        f"on {machine['cpu_count']} cores, {machine['started']}, {machine.get('clock', 'wall')} clock ==",
        f"GEMM peak: fp32 {results['peak_flops']['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {results['peak_flops']['bfloat16'] / 1e9:.0f} GFLOP/s",
    ]
    if "sampling" in results:
        lines += ["", "sampling: generate, guided (cfg 4, 2 rows per image), top-k 900, top-p 0.95",
                  f"{'shape':10} {'blocks':>6} {'batch':>5} {'dtype':>8} {'img/s':>8} {'proj.':>8} {'util':>5} "
                  f"{'transf.':>7} {'filter':>7} {'tokzr':>6} {'text':>6} {'peak MB':>8}"]
        by_key = {}
        for row in results["sampling"]:
            share = row["share"]
            projected = f"{row['projected_images_per_second']:8.2f}" if row["depth_run"] != row["depth"] else " " * 8
            lines.append(
                f"{row['shape']:10} {row['depth_run']:>3}/{row['depth']:<2} {row['batch']:5d} {row['dtype']:>8} "
                f"{row['images_per_second']:8.2f} {projected} {row['transformer_utilisation']:5.0%} "
                f"{share['transformer']:7.0%} {share['filter+draw']:7.1%} {share['tokenizer']:6.0%} "
                f"{share['text']:6.0%} {row['peak_memory_mb']:8.0f}"
            )
            by_key[(row["shape"], row["batch"], row["dtype"])] = row
        speedups = [
            f"{shape} b{batch} {row['seconds'] / by_key[(shape, batch, 'bfloat16')]['seconds']:.2f}x"
            for (shape, batch, dtype), row in by_key.items()
            if dtype == "float32" and (shape, batch, "bfloat16") in by_key
        ]
        lines.append("bf16 / fp32 images/s: " + ", ".join(speedups))
        lines.append("(proj.: images/s projected to the full depth from the blocks run; util: transformer FLOPs /"
                     " transformer time / GEMM peak of that dtype)")
    for entry in results.get("baselines", []):
        lines += ["", f"equal backbone d16-w256, fp32, batch {entry['batch']}, guided (cost models, random weights)",
                  f"{'way':32} {'s/call':>9} {'x slower':>9} {'x FLOPs':>8}"]
        for name, seconds in entry["seconds"].items():
            lines.append(
                f"{name:32} {seconds:9.2f} {entry['slowdown_vs_next_scale'][name]:9.2f} "
                f"{entry['flop_ratio_vs_next_scale'][name]:8.2f}"
            )
        pass_seconds = entry["diffusion_pass_seconds"]
        lines.append(f"(diffusion: one guided full-grid pass measured, {pass_seconds:.3f} s, times the steps)")
    if "resolution" in results:
        sweep = results["resolution"]
        lines += ["", f"cost vs resolution: d16-w256, batch {sweep['batch']} guided, fp32, transformer + sampling step",
                  f"{'side':>4} {'scales':>6} {'tokens':>6} {'seconds':>8} {'peak MB':>8} {'GFLOP':>8} "
                  f"{'last scale':>10}"]
        for row in sweep["rows"]:
            lines.append(
                f"{row['side']:4d} {len(row['scale_sizes']):6d} {row['tokens']:6d} {row['seconds']:8.3f} "
                f"{row['peak_memory_mb']:8.0f} {row['flops'] / 1e9:8.1f} {row['scale_share'][-1]:10.0%}"
            )
        lines.append(f"fitted exponent: time ~ tokens^{sweep['time_exponent']:.2f}, "
                     f"FLOPs ~ tokens^{sweep['flop_exponent']:.2f}")
    if "training" in results:
        train = results["training"]
        lines += ["", f"training steps, batch {train['batch']} (transformer: demo preset, {train['tokens']} tokens; "
                  "tokenizer: demo 64 px)"]
        for name in ("float32", "bfloat16"):
            transformer, tokenizer = train[f"transformer {name}"], train[f"tokenizer {name}"]
            lines.append(
                f"  {name:8}: transformer {transformer['tokens_per_second']:8.0f} tokens/s "
                f"(util {transformer['utilisation']:.0%}), tokenizer {tokenizer['images_per_second']:6.1f} images/s "
                f"(util {tokenizer['utilisation']:.0%})"
            )
    if "attention" in results:
        lines += ["", "block-causal self-attention forward, fp32, batch 4, 8 heads x 64 (ms)"]
        for name, entry in results["attention"].items():
            timings = ", ".join(f"{way} {seconds * 1e3:.2f}" for way, seconds in entry["seconds"].items())
            note = "; ".join(f"{key}: {value}" for key, value in entry["notes"].items())
            lines.append(f"  {name} ({entry['tokens']} tokens): {timings}" + (f"  [{note}]" if note else ""))
    if "memory" in results:
        memory = results["memory"]
        lines += ["", "KV cache after a guided loop, batch 8 (MB): measured = formula 2*depth*rows*L*width*bytes"]
        for name, entry in memory["kv_cache"].items():
            match = "match" if entry["measured_bytes"] == entry["formula_bytes"] else "MISMATCH"
            lines.append(f"  {name:22}: {entry['measured_bytes'] / 1e6:9.2f} vs {entry['formula_bytes'] / 1e6:9.2f}"
                         f" ({match}; with text keys/values {entry['with_text_bytes'] / 1e6:.2f})")
        growth = memory["growth"]
        lines.append(f"memory over {growth['calls']} generate calls (demo, batch {growth['batch']}): "
                     f"{growth['megabytes'][1]:.0f} -> {growth['megabytes'][-1]:.0f} MB "
                     f"(growth {growth['growth_mb']:+.1f} MB)")
    if "compile" in results:
        entry = results["compile"]
        lines += ["", f"torch.compile of the blocks, demo shape, fp32: first calls {entry['compile_seconds']:.0f} s"]
        for batch, row in entry["batches"].items():
            even = row["break_even_calls"]
            lines.append(
                f"  batch {batch}: eager {row['eager_seconds']:.3f} s, compiled {row['compiled_seconds']:.3f} s "
                f"({row['speedup']:.2f}x; transformer {row['eager_transformer_seconds']:.3f} -> "
                f"{row['compiled_transformer_seconds']:.3f} s); pays after "
                + (f"{even:.0f} calls" if even is not None else "never")
            )
    if "checkpointing" in results:
        from bench.checkpointing import checkpointing_lines

        lines += checkpointing_lines(results["checkpointing"])
    lines.append(f"peak RSS of the suite: {results['peak_rss_mb']:.0f} MB; "
                 f"{results['machine'].get('seconds', 0) / 60:.1f} minutes")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Time vs tokens (log-log, with the fitted exponent) and the equal-backbone comparison, as one PNG;
    None when matplotlib (the `bench` extra) is missing or there is nothing to plot."""
    if "resolution" not in results and "baselines" not in results:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    machine = results["machine"]
    label = (f"{machine['device']}, {machine['threads']} thread(s), load {machine['load_average_start']:.1f}-"
             f"{machine.get('load_average_end', 0):.1f}, {machine.get('clock', 'wall')} clock")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if "resolution" in results:
        sweep = results["resolution"]
        tokens = [row["tokens"] for row in sweep["rows"]]
        axes[0].loglog(tokens, [row["seconds"] for row in sweep["rows"]], "o-",
                       label=f"measured, exponent {sweep['time_exponent']:.2f}")
        scale = sweep["rows"][0]["seconds"] / sweep["rows"][0]["flops"]
        axes[0].loglog(tokens, [row["flops"] * scale for row in sweep["rows"]], "--",
                       label=f"FLOPs (scaled), exponent {sweep['flop_exponent']:.2f}")
        for row in sweep["rows"]:
            axes[0].annotate(f"{row['side']}x{row['side']}", (row["tokens"], row["seconds"]), fontsize=8)
        axes[0].set_xlabel("tokens of the schedule")
        axes[0].set_ylabel(f"{machine.get('clock', 'wall')} seconds per image (guided)")
        axes[0].set_title("cost vs resolution (d16-w256, fp32, batch 1)", fontsize=10)
        axes[0].legend(fontsize=8)
    if "baselines" in results:
        entries = results["baselines"]
        names = [name for name in entries[0]["seconds"] if all(name in entry["seconds"] for entry in entries)]
        width = 0.8 / len(entries)
        for index, entry in enumerate(entries):
            positions = [i + index * width for i in range(len(names))]
            per_image = [entry["seconds"][name] / entry["batch"] for name in names]
            axes[1].bar(positions, per_image, width, label=f"batch {entry['batch']}")
        axes[1].set_yscale("log")
        axes[1].set_xticks([i + width * (len(entries) - 1) / 2 for i in range(len(names))], names, fontsize=8)
        axes[1].set_ylabel(f"{machine.get('clock', 'wall')} seconds per image (guided)")
        axes[1].set_title("equal backbone (d16-w256, fp32): cost models", fontsize=10)
        axes[1].legend(fontsize=8)
    figure.suptitle(label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
