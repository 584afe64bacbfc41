"""The Edit tab: an uploaded or generated image, a brush (or an uploaded mask) for the region to redraw,
a prompt; inpaint, outpaint or keep the first scales; before and after side by side."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from nextscale.ui.controls import sampling_config, sampling_controls, seed_controls, whole
from nextscale.ui.edits import EDIT_MODES, EDITOR_SIDE, EditRequest, editor_picture, mask_layer, painted_mask, run_edit
from nextscale.ui.services import Services, escape_markdown
from nextscale.ui.uploads import UploadError, validate_upload

SOURCE_SIDE = 1024
"""Uploads are kept at most this large (the model sees 64-256 px; the brush canvas 512)."""


def editor_value(source: Image.Image, layer: Image.Image | None = None) -> dict[str, Any]:
    picture = editor_picture(source, EDITOR_SIDE)
    return {"background": picture, "layers": [layer] if layer is not None else [], "composite": picture}


def recent_gallery() -> gr.Gallery:
    """The Edit tab's choice of generated images; created before the tabs (the Generate tab fills it) and
    rendered in the Edit tab."""
    return gr.Gallery(label="or pick a generated image", columns=4, height=160, format="png", allow_preview=False,
                      interactive=False, elem_id="edit-recent", elem_classes=["pixelated"], render=False)


@dataclass
class EditWidgets:
    """The Edit tab's components, for wiring."""

    upload: gr.File
    mask_upload: gr.File
    prompt: gr.Textbox
    mode: gr.Radio
    sides: list[gr.Number]
    keep: gr.Slider
    seed: gr.Number
    controls: dict[str, Any]
    button: gr.Button
    status: gr.Markdown
    canvas: gr.ImageEditor
    before_after: gr.ImageSlider
    regenerated: gr.Image


def edit_layout(services: Services, recent: gr.Gallery) -> EditWidgets:
    """Controls on the left (upload, mask, prompt, mode, sampling), the canvas and results on the right."""
    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="upload an image", file_count="single", type="filepath", elem_id="edit-upload")
            recent.render()
            mask_upload = gr.File(label="or upload a mask (white = regenerate)", file_count="single",
                                  type="filepath", elem_id="edit-mask-upload")
            prompt = gr.Textbox("a man with glasses", label="prompt for the regenerated part", elem_id="edit-prompt")
            mode = gr.Radio(list(EDIT_MODES), value="inpaint", label="edit", elem_id="edit-mode",
                            info="inpaint: the painted region; outpaint: a border; keep scales: a variation")
            with gr.Row():
                sides = [gr.Number(8, precision=0, minimum=0, label=f"outpaint {side} (px)",
                                   elem_id=f"edit-outpaint-{side}") for side in ("left", "top", "right", "bottom")]
            keep = gr.Slider(1, 10, value=2, step=1, label="keep scales", elem_id="edit-keep-scales",
                             info="variations: the first k scales (layout, colours) come from the image")
            seed = seed_controls("edit-")
            controls = sampling_controls("edit-", services.sampling_defaults)
            button = gr.Button("Edit", variant="primary", elem_id="edit-run")
            status = gr.Markdown("", elem_id="edit-status")
        with gr.Column(scale=3):
            canvas = gr.ImageEditor(
                label="paint the region to regenerate", type="pil", image_mode="RGBA", sources=[], transforms=[],
                layers=False, canvas_size=(EDITOR_SIDE, EDITOR_SIDE), elem_id="edit-canvas", format="png",
                brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=48),
                eraser=gr.Eraser(default_size=48),
            )
            before_after = gr.ImageSlider(label="before | after", type="pil", format="png", interactive=False,
                                          elem_id="edit-before-after", elem_classes=["pixelated"])
            regenerated = gr.Image(label="regenerated pixels (white)", format="png", interactive=False,
                                   elem_id="edit-regenerated", elem_classes=["pixelated"], height=160)

    return EditWidgets(upload, mask_upload, prompt, mode, sides, keep, seed, controls, button, status, canvas,
                       before_after, regenerated)


def upload_handlers(services: Services) -> tuple[Callable, Callable, Callable]:
    """The handlers of an uploaded image, a picked generated image and an uploaded mask."""
    limits = services.config.upload

    def on_upload(path: str | None, current: Image.Image | None) -> tuple[Any, Any, str]:
        record = services.log.start("upload", {"file": path})
        try:
            picture = validate_upload(path, limits)
        except UploadError as error:
            return current, gr.skip(), services.report_error(record, error)
        width, height = picture.size
        picture.thumbnail((SOURCE_SIDE, SOURCE_SIDE))
        services.log.done(record, f"{width}x{height}")
        return picture, editor_value(picture), f"loaded an image of {width} x {height} pixels: paint on it"

    def on_pick(items: list[Any] | None, event: gr.SelectData) -> tuple[Any, Any, str]:
        record = services.log.start("pick", {"index": event.index})
        try:
            path = items[event.index][0] if items else None
            picture = validate_upload(path, limits)
        except (UploadError, IndexError, TypeError) as error:
            return gr.skip(), gr.skip(), services.report_error(record, error)
        services.log.done(record, "picked a generated image")
        return picture, editor_value(picture), "picked a generated image: paint on it"

    def on_mask(path: str | None, current: Image.Image | None) -> tuple[Any, str]:
        record = services.log.start("mask upload", {"file": path})
        try:
            if current is None:
                raise UploadError("upload the image (or pick a generated one) before its mask")
            mask = validate_upload(path, limits)
            if abs(mask.width / mask.height - current.width / current.height) > 0.01:
                raise UploadError(f"the mask is {mask.width} x {mask.height} but the image is {current.width} x "
                                  f"{current.height}: give a mask of the image's shape")
        except UploadError as error:
            return gr.skip(), services.report_error(record, error)
        picture = editor_picture(current, EDITOR_SIDE)
        services.log.done(record, f"{mask.width}x{mask.height}")
        return editor_value(current, mask_layer(mask, picture.size)), "mask loaded onto the image: edit it or run"

    return on_upload, on_pick, on_mask


def edit_handler(services: Services) -> Callable:
    """The handler of the Edit button: check the request, run the edit, report before and after."""

    def on_edit(edit_mode: str, text: str, base_seed: float | None, left: float, top: float, right: float,
                bottom: float, keep_scales: float, cfg: float, schedule: str, off_last: float, top_k: float | None,
                top_p: float, temperature: float, painted: dict[str, Any] | None, picture: Image.Image | None,
                model: str | None) -> tuple[Any, Any, str]:
        settings = {"model": model or "demo", "mode": edit_mode, "prompt": text, "seed": base_seed,
                    "sides": (left, top, right, bottom), "keep_scales": keep_scales, "cfg": cfg, "top_k": top_k,
                    "top_p": top_p, "temperature": temperature}
        record = services.log.start("edit", settings)
        try:
            if picture is None:
                raise ValueError("upload an image or pick a generated one first")
            margins = tuple(whole(value, f"outpaint {side}") for value, side in
                          zip((left, top, right, bottom), ("left", "top", "right", "bottom")))
            request = EditRequest(edit_mode, text or "", whole(base_seed, "seed"),  # type: ignore[arg-type]
                                  sampling_config(cfg, schedule, off_last, top_k, top_p, temperature),
                                  margins, whole(keep_scales, "keep scales"))  # type: ignore[arg-type]
            request.check()
            mask = painted_mask(painted.get("layers") if painted else None)
            loaded = services.registry.get(model)
            loaded.require_text("Edit")
            with loaded.slot() as waited:
                outcome = run_edit(loaded, request, picture, mask)
        except Exception as error:
            return gr.skip(), gr.skip(), services.report_error(record, error)
        message = "; ".join([f"{edit_mode} in {outcome.seconds:.2f} s on {loaded.name} (waited {waited:.2f} s in "
                             "the queue)", *outcome.notes])
        services.log.done(record, message)
        return (outcome.before, outcome.after), outcome.regenerated, escape_markdown(message)

    return on_edit


def build_edit_tab(services: Services, model_name: gr.State, recent: gr.Gallery) -> None:
    source = gr.State(None)  # the validated source picture (PIL, RGB) of this browser session
    widgets = edit_layout(services, recent)
    upload, mask_upload, canvas, status = widgets.upload, widgets.mask_upload, widgets.canvas, widgets.status
    on_upload, on_pick, on_mask = upload_handlers(services)
    uploads = {"concurrency_id": "upload", "concurrency_limit": 2}
    upload.upload(on_upload, inputs=[upload, source], outputs=[source, canvas, status], api_name="upload_image",
                  **uploads)
    recent.select(on_pick, inputs=[recent], outputs=[source, canvas, status], api_name=False, **uploads)
    mask_upload.upload(on_mask, inputs=[mask_upload, source], outputs=[canvas, status], api_name="upload_mask",
                       **uploads)
    inputs = [widgets.mode, widgets.prompt, widgets.seed, *widgets.sides, widgets.keep, *widgets.controls.values(),
              canvas, source, model_name]
    widgets.button.click(edit_handler(services), inputs=inputs, outputs=[widgets.before_after, widgets.regenerated,
                         status], api_name="edit", concurrency_id="sampling",
                         concurrency_limit=services.config.sampling_workers)
