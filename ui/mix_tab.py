"""The Mix tab: a layout prompt for the coarse scales and a detail prompt from the switch scale on, drawn
next to each prompt alone with the same seeds, forming scale by scale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from nextscale.ui.commands import describe
from nextscale.ui.controls import sampling_config, sampling_controls, seed_controls, whole
from nextscale.ui.generate_tab import scale_status
from nextscale.ui.mix import ROWS, MixRequest, MixResult, run_mix
from nextscale.ui.services import Services, escape_markdown
from nextscale.ui.streaming import Finished, stream


def build_mix_tab(services: Services, model_name: gr.State) -> None:
    config = services.config
    with gr.Row():
        with gr.Column(scale=2):
            layout = gr.Textbox("a woman with red hair on a green background", label="layout prompt (coarse scales)",
                                elem_id="mix-layout-prompt")
            detail = gr.Textbox("a man with a beard and glasses", label="detail prompt (fine scales)",
                                elem_id="mix-detail-prompt")
            switch = gr.Slider(1, 9, value=3, step=1, label="switch scale", elem_id="mix-switch-scale",
                               info="the first scale drawn from the detail prompt (1 = only the 1x1 colour from "
                               "the layout prompt)")
            count = gr.Slider(1, max(1, config.max_images // len(ROWS)), value=min(2, config.max_images // 3),
                              step=1, label="images", elem_id="mix-num-images")
            seed = seed_controls("mix-")
            controls = sampling_controls("mix-", services.sampling_defaults)
            button = gr.Button("Mix", variant="primary", elem_id="mix-run")
            status = gr.Markdown("", elem_id="mix-status")
        with gr.Column(scale=3):
            live = gr.Image(label="forming, scale by scale (rows: mix, layout alone, detail alone)", format="png",
                            interactive=False, height=300, elem_id="mix-live", elem_classes=["pixelated"])
            gallery = gr.Gallery(label="mix, then each prompt alone (same seeds)", format="png", columns=3,
                                 elem_id="mix-gallery", elem_classes=["pixelated"], height=420)
            command = gr.Code(label="reproduce the mix on the command line", language="shell", lines=3,
                              interactive=False, elem_id="mix-command", wrap_lines=True)

    def on_mix(layout_prompt: str, detail_prompt: str, switch_scale: float, images: float, base_seed: float | None,
               cfg: float, schedule: str, off_last: float, top_k: float | None, top_p: float, temperature: float,
               model: str | None) -> Iterator[dict[Any, Any]]:
        settings = {"model": model or "demo", "layout_prompt": layout_prompt, "detail_prompt": detail_prompt,
                    "switch_scale": switch_scale, "num_images": images, "seed": base_seed, "cfg": cfg,
                    "top_k": top_k, "top_p": top_p, "temperature": temperature}
        record = services.log.start("mix", settings)
        try:
            request = MixRequest((layout_prompt or "").strip(), (detail_prompt or "").strip(),
                                 whole(switch_scale, "switch scale"), whole(images, "images"), whole(base_seed, "seed"),
                                 sampling_config(cfg, schedule, off_last, top_k, top_p, temperature))
            loaded = services.registry.get(model)
            loaded.require_text("Mix")
            request.check(len(loaded.scale_sizes), config.max_images)
            yield {status: f"waiting for {escape_markdown(loaded.name)} ...", gallery: None, command: ""}

            def work(report: Any) -> tuple[MixResult, float]:
                with loaded.slot() as waited:
                    return run_mix(loaded, request, report), waited

            result, waited = None, 0.0
            for item in stream(work):
                if isinstance(item, Finished):
                    result, waited = item.value
                else:
                    yield {live: item.grid, status: scale_status(item)}
            assert result is not None
            message = (f"mixed {len(result.mixed)} in {result.seconds:.2f} s on {loaded.name} "
                       f"(waited {waited:.2f} s in the queue)")
            services.log.done(record, message)
            pictures: list[tuple[Image.Image, str]] = []
            for index in range(len(result.mixed)):
                pictures += [(result.mixed[index], f"mix, seed {request.seed + index}"),
                             (result.layout_only[index], "layout prompt alone"),
                             (result.detail_only[index], "detail prompt alone")]
            yield {status: escape_markdown(message), gallery: pictures, command: describe(result.command)}
        except Exception as error:
            yield {status: services.report_error(record, error)}

    button.click(on_mix, inputs=[layout, detail, switch, count, seed, *controls.values(), model_name],
                 outputs=[status, live, gallery, command], api_name="mix", concurrency_id="sampling",
                 concurrency_limit=config.sampling_workers)
