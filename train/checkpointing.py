"""Activation checkpointing (`--activation-checkpointing`), applied from the training side.

A checkpointed module keeps only its inputs for the backward pass and runs its forward again there
(`torch.utils.checkpoint`, non-reentrant, with the random state of the first run, so dropout and
stochastic depth draw the same masks and the loss and gradients are those of the plain run). The
transformer's blocks and the tokenizer's ResNet and attention blocks are checkpointed; the models
themselves know nothing about it: each chosen module's class is swapped for a subclass whose forward
wraps the original one, so parameter names, state dicts, exports and copies (the weight EMA) stay as
they are. Under `torch.no_grad()` (sampling, evaluation, the EMA copy) the forward runs plainly.

What it saves and costs: docs/experiments/activation-checkpointing.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_SUBCLASSES: dict[type, type] = {}


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = functools.partial(type(self)._checkpoint_wrapped.forward, self)  # the original class's forward
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpointed_class(cls: type) -> type:
    """The subclass of `cls` whose forward is checkpointed (one per class)."""
    if getattr(cls, "_activation_checkpointed", False):
        return cls
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Checkpointed{cls.__name__}", (cls,),
                                {"forward": _checkpointed_forward, "_activation_checkpointed": True,
                                 "_checkpoint_wrapped": cls, "__module__": cls.__module__})
    return _SUBCLASSES[cls]


def checkpoint_modules(modules: Iterable[nn.Module]) -> int:
    """Checkpoint each module's forward in place; returns how many were newly checkpointed."""
    count = 0
    for module in modules:
        if not is_checkpointed(module):
            module.__class__ = checkpointed_class(type(module))
            count += 1
    return count


def is_checkpointed(module: nn.Module) -> bool:
    return bool(getattr(type(module), "_activation_checkpointed", False))


def checkpoint_transformer(model: nn.Module) -> int:
    """Checkpoint every block of a `NextScaleTransformer` (its `blocks`); returns the count."""
    return checkpoint_modules(model.blocks)


def checkpoint_tokenizer(model: nn.Module) -> int:
    """Checkpoint the ResNet and attention blocks of a `MultiScaleVQVAE`'s encoder and decoder (every
    level and the mid blocks); returns the count."""
    from nextscale.tokenizer.autoencoder import AttentionBlock, ResBlock

    parts = (model.encoder.body, model.encoder.mid, model.decoder.mid, model.decoder.body)
    return checkpoint_modules(module for part in parts for module in part
                              if isinstance(module, (ResBlock, AttentionBlock)))
