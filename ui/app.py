"""The page: its tabs, the request queue, and the server that binds it to this machine (the console
script is `nextscale.ui.main`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from nextscale.ui.config import UIConfig

try:
    import gradio as gr
except ImportError as error:  # the optional extra is missing: one line that says how to add it
    raise SystemExit("error: the web UI needs gradio: pip install 'nextscale[ui]' (or `make ui`)") from error

from nextscale.ui.edit_tab import build_edit_tab, recent_gallery
from nextscale.ui.generate_tab import build_generate_tab
from nextscale.ui.mix_tab import build_mix_tab
from nextscale.ui.model_tab import build_model_tab, info_markdown
from nextscale.ui.models import DEMO_NAME, ModelRegistry
from nextscale.ui.services import Services
from nextscale.ui.zoom_tab import build_zoom_tab

TITLE = "nextscale"
CACHE_CLEANUP = (600, 3600)
"""Every 10 minutes, Gradio deletes the files it served that are older than an hour."""
CSS = """
.pixelated img { image-rendering: pixelated; }
"""
INTRO = (
    "# nextscale\n"
    "Coarse-to-fine text-to-image generation by next-scale prediction: each image is decided scale by scale, "
    "1x1 (its mean colour), then 2x2, 3x3, ... up to the full token map."
)


def build_app(services: Services) -> gr.Blocks:
    """The page, wired to `services`; `launch` it (see `serve`) or mount it."""
    config = services.config
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as blocks:
        gr.Markdown(INTRO)
        model_name = gr.State(config.checkpoint)
        recent = recent_gallery()
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                build_generate_tab(services, model_name, recent)
            with gr.Tab("Edit", id="edit", elem_id="tab-edit"):
                build_edit_tab(services, model_name, recent)
            with gr.Tab("Mix", id="mix", elem_id="tab-mix"):
                build_mix_tab(services, model_name)
            with gr.Tab("Zoom", id="zoom", elem_id="tab-zoom"):
                build_zoom_tab(services, model_name)
            with gr.Tab("Model", id="model", elem_id="tab-model"):
                info = build_model_tab(services, model_name)

        def on_page_load(name: str | None) -> str:
            try:
                return info_markdown(services.registry.get(name))
            except Exception as error:
                record = services.log.start("page load", {"pipeline": name or DEMO_NAME})
                return services.report_error(record, error)

        blocks.load(on_page_load, inputs=[model_name], outputs=[info], queue=False)
    return blocks.queue(max_size=config.max_queue, default_concurrency_limit=config.sampling_workers)


def serve(config: UIConfig, registry: ModelRegistry | None = None, block: bool = True,
          on_serving: Callable[[], object] | None = None) -> tuple[gr.Blocks, str]:
    """Build the page and serve it (then call `on_serving`); returns (app, local URL)."""
    services = Services(config, registry or Services.registry_for(config))
    blocks = build_app(services)
    _, url, _ = blocks.launch(
        server_name=config.host,
        server_port=config.port or None,
        share=config.share,
        inbrowser=config.open_browser,
        max_file_size=config.upload.max_bytes,
        show_error=False,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
        prevent_thread_lock=True,
        css=CSS,
        footer_links=[],
    )
    logging.getLogger("nextscale.ui").info("serving on %s", url)
    if on_serving is not None:
        on_serving()
    if block:
        try:
            blocks.block_thread()
        finally:
            services.store.close()
    return blocks, url
