"""The Zoom tab: one prompt per level, the zoom factor, in or out; the zoom plays in the page (MP4, and the
GIF) and every file downloads."""

from __future__ import annotations

from typing import Any

import gradio as gr

from nextscale.ui.commands import describe, split_prompts
from nextscale.ui.controls import sampling_config, sampling_controls, seed_controls, whole
from nextscale.ui.services import Services, escape_markdown
from nextscale.ui.zoom import MAX_LEVELS, ZoomRequest, run_zoom

DEFAULT_PROMPTS = (
    "a portrait of a man with glasses and a beard on a blue background\n"
    "a close-up of the face of a man with glasses and a beard\n"
    "an extreme close-up of the eyes of a man wearing glasses"
)


def build_zoom_tab(services: Services, model_name: gr.State) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompts = gr.Textbox(DEFAULT_PROMPTS, lines=4, label=f"one prompt per level, the widest first "
                                 f"(2 to {MAX_LEVELS})", elem_id="zoom-prompts")
            with gr.Row():
                factor = gr.Radio([2, 4], value=2, label="zoom factor", elem_id="zoom-factor",
                                  info="each level shows the centre 1/factor of the one before")
                zoom_out = gr.Checkbox(False, label="zoom out", elem_id="zoom-out",
                                       info="each level shrinks the previous one into its centre")
            seed = seed_controls("zoom-")
            controls = sampling_controls("zoom-", services.sampling_defaults)
            button = gr.Button("Zoom", variant="primary", elem_id="zoom-run")
            status = gr.Markdown("", elem_id="zoom-status")
        with gr.Column(scale=3):
            video = gr.Video(label="the zoom", autoplay=True, loop=True, interactive=False, elem_id="zoom-video",
                             height=360)
            animation = gr.Image(label="the zoom as a GIF", interactive=False, elem_id="zoom-gif", height=256)
    levels = gr.Gallery(label="levels", format="png", columns=MAX_LEVELS, elem_id="zoom-levels",
                        elem_classes=["pixelated"], height="auto")
    with gr.Row():
        downloads = gr.File(label="downloads", file_count="multiple", interactive=False, elem_id="zoom-downloads")
        command = gr.Code(label="reproduce on the command line", language="shell", lines=3, interactive=False,
                          elem_id="zoom-command", wrap_lines=True)

    def on_zoom(text: str, zoom_factor: float, outwards: bool, base_seed: float | None, cfg: float, schedule: str,
                off_last: float, top_k: float | None, top_p: float, temperature: float,
                model: str | None) -> tuple[Any, ...]:
        settings = {"model": model or "demo", "prompts": split_prompts(text or ""), "factor": zoom_factor,
                    "zoom_out": outwards, "seed": base_seed, "cfg": cfg, "top_k": top_k, "top_p": top_p,
                    "temperature": temperature}
        record = services.log.start("zoom", settings)
        try:
            request = ZoomRequest(tuple(settings["prompts"]), whole(zoom_factor, "zoom factor"), bool(outwards),
                                  whole(base_seed, "seed"),
                                  sampling_config(cfg, schedule, off_last, top_k, top_p, temperature))
            request.check()
            loaded = services.registry.get(model)
            loaded.require_text("Zoom")
            with loaded.slot() as waited:
                outcome = run_zoom(loaded, request, services.store.new_folder())
        except Exception as error:
            return (gr.skip(),) * 5 + (services.report_error(record, error),)
        agreement = ", ".join(f"{value:.1f}" for value in outcome.agreement_db)
        message = (f"zoom of {len(outcome.levels)} levels in {outcome.seconds:.2f} s on {loaded.name} (waited "
                   f"{waited:.2f} s in the queue); agreement of each level with its parent's centre before "
                   f"blending: {agreement} dB")
        services.log.done(record, message)
        video_value = str(outcome.video) if outcome.video is not None else None
        return (video_value, str(outcome.gif), list(zip(outcome.levels, outcome.captions)),
                [str(path) for path in outcome.files], describe(outcome.command), escape_markdown(message))

    button.click(on_zoom, inputs=[prompts, factor, zoom_out, seed, *controls.values(), model_name],
                 outputs=[video, animation, levels, downloads, command, status], api_name="zoom",
                 concurrency_id="sampling",
                 concurrency_limit=services.config.sampling_workers)
