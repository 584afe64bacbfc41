"""Generate images from text prompts: `python sample.py --prompt "a man with a beard" --num-images 4`.

Thin entry point: the options and the logic live in `sampling.cli`; `--help` lists every option.
"""

from __future__ import annotations

import tyro

from sampling.cli import SampleArgs, main

if __name__ == "__main__":
    main(tyro.cli(SampleArgs))
