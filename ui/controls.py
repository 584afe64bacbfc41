"""Controls shared by the tabs that sample: the sampling settings and the seed."""

from __future__ import annotations

import secrets

import gradio as gr

from nextscale.sampling import SamplingConfig

DEFAULTS = SamplingConfig()


def sampling_controls(prefix: str = "") -> dict[str, gr.components.Component]:
    """cfg, schedule, guidance-off-last, top-k, top-p, temperature: shared by the tabs that sample (their
    element ids start with `prefix`, so that each tab's are distinct in the page)."""
    with gr.Accordion("Sampling", open=not prefix):
        with gr.Row():
            cfg = gr.Slider(0, 10, value=DEFAULTS.cfg_scale, step=0.1, label="cfg", elem_id=f"{prefix}cfg",
                            info="guidance strength; 0 = off")
            schedule = gr.Radio(["linear", "constant"], value=DEFAULTS.guidance_schedule, label="guidance schedule",
                                elem_id=f"{prefix}guidance-schedule")
            off_last = gr.Slider(0, 10, value=DEFAULTS.guidance_off_last, step=1, label="guidance off for the last",
                                 elem_id=f"{prefix}guidance-off-last", info="scales without guidance (faster)")
        with gr.Row():
            top_k = gr.Number(DEFAULTS.top_k, precision=0, minimum=0, label="top-k", elem_id=f"{prefix}top-k",
                              info="0 = every code; 1 = greedy")
            top_p = gr.Slider(0, 1, value=DEFAULTS.top_p, step=0.01, label="top-p", elem_id=f"{prefix}top-p")
            temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="temperature",
                                    elem_id=f"{prefix}temperature", info="0 = greedy")
    return {"cfg": cfg, "schedule": schedule, "off_last": off_last, "top_k": top_k, "top_p": top_p,
            "temperature": temperature}


def sampling_config(cfg: float, schedule: str, off_last: float, top_k: float | None, top_p: float,
                    temperature: float) -> SamplingConfig:
    """The controls' values -> a validated SamplingConfig (ValueError names the bad one)."""
    return SamplingConfig(cfg_scale=float(cfg), guidance_schedule=schedule,  # type: ignore[arg-type]
                          guidance_off_last=int(off_last), top_k=int(top_k or 0), top_p=float(top_p),
                          temperature=float(temperature))


def seed_controls(prefix: str = "") -> gr.Number:
    """A seed box and a button that draws a random seed into it."""
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}seed",
                         info="image i uses seed + i")
        random_seed = gr.Button("random seed", elem_id=f"{prefix}random-seed", size="sm")
    random_seed.click(lambda: secrets.randbelow(2**31), outputs=seed, queue=False, api_name=False)
    return seed
