"""The Generate tab: prompts and sampling settings in; the batch forming scale by scale, the images,
their progression GIFs and the command line that redraws them out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from nextscale.ui.commands import describe, split_prompts
from nextscale.ui.controls import sampling_config, sampling_controls, seed_controls, whole
from nextscale.ui.generation import GenerateRequest, GenerateResult, ScaleFrames, run_generate
from nextscale.ui.services import Services, escape_markdown
from nextscale.ui.streaming import Finished, stream

DEFAULT_PROMPT = "a man with a beard and glasses on a blue background"


def scale_status(frames: ScaleFrames) -> str:
    return (f"scale {frames.scale + 1}/{frames.num_scales}: {frames.size}x{frames.size} "
            f"({frames.seconds:.2f} s)")


def build_generate_tab(services: Services, model_name: gr.State, recent: gr.Gallery) -> None:
    """The tab; its images also go to `recent` (the Edit tab's choice of generated images)."""
    config = services.config
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(DEFAULT_PROMPT, lines=3, label="prompts (one per line)", elem_id="prompt")
            num_images = gr.Slider(1, config.max_images, value=min(4, config.max_images), step=1,
                                   label="images per prompt", elem_id="num-images")
            seed = seed_controls()
            controls = sampling_controls("", services.sampling_defaults)
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Markdown("", elem_id="generate-status")
        with gr.Column(scale=3):
            live = gr.Image(label="forming, scale by scale", format="png", interactive=False, height=300,
                            elem_id="live-preview", elem_classes=["pixelated"])
            progression = gr.Gallery(label="coarse to fine (every scale)", format="png", columns=6,
                                     elem_id="progression", elem_classes=["pixelated"], height=170)
    gallery = gr.Gallery(label="images", format="png", columns=4, elem_id="gallery", elem_classes=["pixelated"],
                         height=330)
    with gr.Row():
        downloads = gr.File(label="progressions (GIF, and strip PNG)", file_count="multiple", interactive=False,
                            elem_id="progression-downloads")
        command = gr.Code(label="reproduce on the command line", language="shell", lines=4, interactive=False,
                          elem_id="command", wrap_lines=True)

    def on_generate(prompt_text: str, count: float, base_seed: float | None, cfg: float, schedule: str,
                    off_last: float, top_k: float | None, top_p: float, temperature: float,
                    model: str | None) -> Iterator[dict[Any, Any]]:
        settings = {"model": model or "demo", "prompts": split_prompts(prompt_text or ""), "num_images": count,
                    "seed": base_seed, "cfg": cfg, "schedule": schedule, "guidance_off_last": off_last,
                    "top_k": top_k, "top_p": top_p, "temperature": temperature}
        record = services.log.start("generate", settings)
        frames: list[Image.Image] = []
        try:
            request = GenerateRequest(tuple(settings["prompts"]), whole(count, "images per prompt"),
                                      whole(base_seed, "seed"),
                                      sampling_config(cfg, schedule, off_last, top_k, top_p, temperature))
            request.check(config.max_images)
            loaded = services.registry.get(model)
            name = escape_markdown(loaded.name)
            yield {status: f"waiting for {name} ...", progression: None, gallery: None, downloads: None, command: ""}

            def work(report: Any) -> tuple[GenerateResult, float]:
                with loaded.slot() as waited:  # held by this worker thread only, released when it ends
                    return run_generate(loaded, request, services.store.new_folder(), report), waited

            result: GenerateResult | None = None
            waited = 0.0
            for item in stream(work):
                if isinstance(item, Finished):
                    result, waited = item.value
                else:
                    frames.append(item.grid)  # the whole strip goes once, at the end
                    yield {live: item.grid, status: scale_status(item)}
            assert result is not None
            count = len(result.images)
            message = (f"{count} image{'s' if count > 1 else ''} in {result.seconds:.2f} s on {loaded.name}"
                       f" (waited {waited:.2f} s in the queue)")
            services.log.done(record, message)
            yield {
                status: escape_markdown(message),
                progression: frames,
                gallery: list(zip(result.images, result.captions)),
                recent: list(zip(result.images, result.captions)),
                downloads: [str(path) for path in [*result.progression_gifs, *result.progression_strips]],
                command: describe(result.command),
            }
        except Exception as error:
            yield {status: services.report_error(record, error)}

    inputs = [prompt, num_images, seed, *controls.values(), model_name]
    outputs = [status, live, progression, gallery, downloads, command, recent]
    button.click(on_generate, inputs=inputs, outputs=outputs, api_name="generate", concurrency_id="sampling",
                 concurrency_limit=config.sampling_workers)
