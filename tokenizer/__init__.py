"""Multi-scale residual VQ tokenizer: images <-> token maps of growing size over one codebook."""

from nextscale.tokenizer.config import TokenizerConfig
from nextscale.tokenizer.model import MultiScaleVQVAE, TokenizerOutput

__all__ = ["MultiScaleVQVAE", "TokenizerConfig", "TokenizerOutput"]
