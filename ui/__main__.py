"""`python -m nextscale.ui`: the same as the `nextscale-ui` console script."""

from nextscale.ui.main import cli

cli()
