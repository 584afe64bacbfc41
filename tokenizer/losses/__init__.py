"""Training-only tokenizer losses: representation alignment, perceptual, adversarial (never loaded to sample)."""
