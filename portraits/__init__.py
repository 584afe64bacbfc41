"""The synthetic portrait world: a procedural, captioned dataset of simple portraits (the offline default),
and what needs its known attributes: the judge that reads them, the small teacher, and the evaluations of
prompt adherence, editing and zoom.

Commands: `python -m nextscale.portraits` (a grid of the data), `python -m nextscale.portraits.train_judge`,
`python -m nextscale.portraits.train_teacher`, `python -m nextscale.portraits.adherence`,
`python -m nextscale.portraits.editing`.
"""
