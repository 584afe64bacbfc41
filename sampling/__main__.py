"""`python -m nextscale.sampling --prompt "a man with a beard"`: the same as `nextscale-sample`."""

from nextscale.sampling.cli import cli

cli()
