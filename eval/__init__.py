"""General metrics: Frechet distance (`fid`), tokenizer reconstruction metrics (`tokenizer`) and code
statistics (`codes`). Evaluations that need the synthetic world's attributes live in `nextscale.portraits`."""
