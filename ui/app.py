"""The page: its tabs, the request queue, and the server that binds it to this machine (the console
script is `nextscale.ui.main`)."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from typing import Any, NoReturn

from nextscale.errors import fail
from nextscale.ui.config import UIConfig

try:
    import gradio as gr
except ImportError:  # the optional extra is missing: one line that says how to add it
    fail("the web UI needs gradio: pip install 'nextscale[ui]' (or `make ui`)")

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


logger = logging.getLogger("nextscale.ui")


class Page(gr.Blocks):
    """The page's Blocks. A request whose inputs Gradio cannot take before any handler runs (too few of them,
    a value of the wrong kind, a file path the server refuses as an upload) gets a message that says what
    is wrong (Gradio sent `{"error": null}` and logged its traceback); the server logs it in one line."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        names = [str(getattr(block, "label", None) or type(block).__name__.lower()) for block in block_fn.inputs]
        if len(inputs) < len(names):
            self.refuse(block_fn, f"{block_fn.name} takes {len(names)} inputs ({', '.join(names)}); the request "
                                  f"gave {len(inputs)}")
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as error:  # Gradio's own checks of the request: the request's fault
            self.refuse(block_fn, refusal(error, names))

    @staticmethod
    def refuse(block_fn: Any, message: str) -> NoReturn:
        logger.warning("refused a request to %s: %s", block_fn.name, message)
        raise gr.Error(html.escape(message, quote=False), print_exception=False)  # the page shows it as HTML


def refusal(error: Exception, names: list[str]) -> str:
    """One line saying which input of a request Gradio refused and why (its own message is several lines)."""
    text = str(error)
    index = re.search(r"input component at index (\d+)", text)
    expected = re.search(r"^Expected .*$", text, re.MULTILINE)
    if index is not None and int(index.group(1)) < len(names):
        reason = expected.group(0) if expected is not None else text.splitlines()[-1]
        reason = reason[:1].lower() + reason[1:]
        return f"input {int(index.group(1)) + 1} ({names[int(index.group(1))]}) is refused: {reason}"
    return f"the request is refused: {text.splitlines()[0] if text else type(error).__name__}"


def build_app(services: Services) -> gr.Blocks:
    """The page, wired to `services`; `launch` it (see `serve`) or mount it."""
    config = services.config
    with Page(title=TITLE, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as blocks:
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
    logger.info("serving on %s", url)
    if on_serving is not None:
        on_serving()
    if block:
        try:
            blocks.block_thread()
        finally:
            services.store.close()
    return blocks, url
