"""nextscale: coarse-to-fine text-to-image generation by next-scale prediction.

This package root holds the foundations every part shares without loading any model:
`nextscale.scales` (scale arithmetic), `nextscale.checkpoint` (the model-directory format) and
`nextscale.images` (tensor <-> picture conversion). The parts are subpackages:
`nextscale.tokenizer`, `nextscale.transformer`, `nextscale.sampling`, `nextscale.train`.
"""

__version__ = "0.2.0"
