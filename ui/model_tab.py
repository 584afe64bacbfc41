"""The Model panel: which pipeline this browser session samples from (the bundled demo by default, any
pipeline directory by path, or a hub id) and what it is."""

from __future__ import annotations

import gradio as gr

from nextscale.ui.models import DEMO_NAME, LoadedModel, with_adapter
from nextscale.ui.services import Services, escape_markdown


def info_markdown(model: LoadedModel) -> str:
    rows = "\n".join(f"| {name} | {escape_markdown(str(value))} |" for name, value in model.info().items())
    return f"**Current model: {escape_markdown(model.name)}**\n\n| | |\n|---|---|\n{rows}"


def build_model_tab(services: Services, model_name: gr.State) -> gr.Markdown:
    """The panel; returns its info box, which the app fills when the page loads."""
    with gr.Row():
        path = gr.Textbox(services.config.checkpoint or "", label="pipeline", elem_id="model-path", scale=4,
                          placeholder=f"'{DEMO_NAME}' (bundled), a pipeline directory written by train_var.py "
                          "(e.g. runs/var/pipeline), or a hub id")
        load = gr.Button("Load", variant="primary", elem_id="model-load", scale=1)
        demo = gr.Button("Use the bundled demo", elem_id="model-demo", scale=1)
    with gr.Row():
        adapter = gr.Textbox("", label="LoRA adapter (optional)", elem_id="model-adapter", scale=4,
                             placeholder="an adapter directory written by train_var.py --lora.rank N "
                             "(output_dir/adapter), trained on this pipeline")
        adapter_scale = gr.Number(1.0, label="adapter scale", elem_id="model-adapter-scale", scale=1)
    info = gr.Markdown(elem_id="model-info")

    def on_load(name: str, current: str | None, adapter_dir: str = "", scale: float = 1.0) -> tuple[str | None, str]:
        record = services.log.start("load model", {"pipeline": name or DEMO_NAME, "adapter": adapter_dir or None})
        try:
            model = services.registry.get(with_adapter(name, adapter_dir, 1.0 if scale is None else float(scale)))
        except Exception as error:  # the session keeps its current model
            still = escape_markdown(current or DEMO_NAME)
            return current, f"{services.report_error(record, error)}\n\n(still using {still})"
        services.log.done(record, f"{model.name}, {model.image_size} px, {len(model.scale_sizes)} scales")
        return (model.name if model.adapter else model.checkpoint), info_markdown(model)

    load.click(on_load, inputs=[path, model_name, adapter, adapter_scale], outputs=[model_name, info],
               api_name="load_model", concurrency_id="load", concurrency_limit=1)
    demo.click(lambda current: on_load(DEMO_NAME, current), inputs=[model_name], outputs=[model_name, info],
               api_name=False, concurrency_id="load", concurrency_limit=1)
    return info
