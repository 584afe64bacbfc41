"""nextscale: coarse-to-fine text-to-image generation by next-scale prediction.

    from nextscale import load_pipeline
    pipe = load_pipeline()                                    # the bundled demo model
    images = pipe("a man with a beard", num_images=4, seed=0)  # a list of PIL images

This package root holds the foundations every part shares without loading any model:
`nextscale.scales` (scale arithmetic), `nextscale.checkpoint` (the model-directory format) and
`nextscale.images` (tensor <-> picture conversion). The parts are subpackages:
`nextscale.tokenizer`, `nextscale.transformer`, `nextscale.sampling`, `nextscale.train`.
`load_pipeline`, `ImagePipeline`, `Generation` and `Zoom` (the Python front door,
`nextscale.sampling.api`) are imported on first use, so `import nextscale` stays light.
"""

__version__ = "0.2.0"

_FRONT_DOOR = ("load_pipeline", "ImagePipeline", "Generation", "Zoom")

__all__ = ["__version__", *_FRONT_DOOR]


def __getattr__(name: str) -> object:
    if name in _FRONT_DOOR:
        from nextscale.sampling import api

        return getattr(api, name)
    raise AttributeError(f"module 'nextscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FRONT_DOOR])
