"""Generate images from text prompts: `python sample.py --prompt "a man with a beard" --num-images 4`.

Thin entry point (the same as `nextscale-sample`): the options and the logic live in
`nextscale.sampling.cli`; `--help` lists every option.
"""

from nextscale.sampling.cli import cli

if __name__ == "__main__":
    cli()
