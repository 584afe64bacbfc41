"""General metrics: Frechet distance (`fid`), tokenizer reconstruction metrics (`tokenizer`), code
statistics (`codes`), and prompt adherence on your own labelled images (`labels`, `label_judge`,
`label_adherence`). Evaluations that need the synthetic world's attributes live in `nextscale.portraits`."""
