"""A small alignment teacher that exists offline: a `transformers` `Dinov2Model` trained here.

Built as a measurement instrument for representation alignment, and now the demo preset's teacher
(bundled as `checkpoints/demo/teacher`, after last-scale alignment with it won the arms): a tiny DINOv2 (ViT)
trained supervised on the synthetic portraits' attributes (a linear head per attribute on its mean patch
token), saved as a local model directory without the heads (`output_dir/model`), and used as
`--alignment.teacher DIR/model --alignment.teacher-resolution 64`. The training runs in the shared
runtime (`nextscale.portraits.train_teacher`): checkpoints, `--resume latest`, one-line errors. It is not the
judge and shares nothing with it (another architecture, other weights, another data seed), so the judge
stays an independent referee of what alignment buys.

    python -m nextscale.portraits.teacher --output-dir runs/teacher   # defaults: 600 steps of 32 portraits
"""

from __future__ import annotations

import torch
from torch import nn


class AttributeProbe(nn.Module):
    """A `Dinov2Model` and one linear head per attribute on its mean patch token."""

    def __init__(self, image_size: int, patch_size: int, hidden_size: int, layers: int, heads: int,
                 attribute_values: tuple[tuple[str, ...], ...]) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.backbone = Dinov2Model(Dinov2Config(
            hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden_size, patch_size=patch_size, image_size=image_size))
        self.heads = nn.ModuleList(nn.Linear(hidden_size, len(values)) for values in attribute_values)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.backbone(pixel_values=pixels).last_hidden_state  # (b, 1 + g*g, D)
        pooled = hidden[:, 1:].mean(dim=1)  # (b, D)
        return [head(pooled) for head in self.heads]

