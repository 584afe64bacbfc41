"""Training: data, training loops, checkpoints and evaluation helpers."""
