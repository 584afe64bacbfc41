"""Evaluation: tokenizer metrics (`tokenizer`), the attribute judge (`judge`), prompt adherence (`adherence`)."""
