"""Controls shared by the tabs that sample: the sampling settings and the seed."""

from __future__ import annotations

import secrets

import gradio as gr

from nextscale.sampling import SamplingConfig

DEFAULTS = SamplingConfig()


def sampling_controls(prefix: str = "", defaults: SamplingConfig = DEFAULTS) -> dict[str, gr.components.Component]:
    """cfg, schedule, guidance-off-last, top-k, top-p, temperature: shared by the tabs that sample (their
    element ids start with `prefix`, so that each tab's are distinct in the page); their initial values
    are `defaults` (the page passes the first model's recommended settings, as `sample.py` uses them)."""
    with gr.Accordion("Sampling", open=not prefix):
        with gr.Row():
            cfg = gr.Slider(0, 10, value=defaults.cfg_scale, step=0.1, label="cfg", elem_id=f"{prefix}cfg",
                            info="guidance strength; 0 = off")
            schedule = gr.Radio(["linear", "constant"], value=defaults.guidance_schedule, label="guidance schedule",
                                elem_id=f"{prefix}guidance-schedule")
            off_last = gr.Slider(0, 10, value=defaults.guidance_off_last, step=1, label="guidance off for the last",
                                 elem_id=f"{prefix}guidance-off-last", info="scales without guidance (faster)")
        with gr.Row():
            top_k = gr.Number(defaults.top_k, precision=0, minimum=0, label="top-k", elem_id=f"{prefix}top-k",
                              info="0 = every code; 1 = greedy")
            top_p = gr.Slider(0, 1, value=defaults.top_p, step=0.01, label="top-p", elem_id=f"{prefix}top-p")
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="temperature",
                                    elem_id=f"{prefix}temperature", info="0 = greedy")
    return {"cfg": cfg, "schedule": schedule, "off_last": off_last, "top_k": top_k, "top_p": top_p,
            "temperature": temperature}


def number(value: object, name: str) -> float:
    """A control's value as a number, or a ValueError naming the control (an emptied box, text via the API)."""
    if value is None or value == "" or isinstance(value, bool):
        raise ValueError(f"{name} is empty: give a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number, got {value!r}") from error


def whole(value: object, name: str) -> int:
    """A control's value as a whole number (ValueError naming the control otherwise)."""
    result = number(value, name)
    if not result.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(result)


def sampling_config(cfg: object, schedule: object, off_last: object, top_k: object, top_p: object,
                    temperature: object) -> SamplingConfig:
    """The controls' values -> a validated SamplingConfig (ValueError names the bad one)."""
    return SamplingConfig(cfg_scale=number(cfg, "cfg"), guidance_schedule=schedule,  # type: ignore[arg-type]
                          guidance_off_last=whole(off_last, "guidance off for the last"),
                          top_k=whole(0 if top_k in (None, "") else top_k, "top-k"), top_p=number(top_p, "top-p"),
                          temperature=number(temperature, "temperature"))


def seed_controls(prefix: str = "") -> gr.Number:
    """A seed box and a button that draws a random seed into it."""
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}seed",
                         info="image i uses seed + i")
        random_seed = gr.Button("random seed", elem_id=f"{prefix}random-seed", size="sm")
    random_seed.click(lambda: secrets.randbelow(2**31), outputs=seed, queue=False, api_name=False)
    return seed
