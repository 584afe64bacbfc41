"""`python -m bench`: the performance suite (bench/run.py)."""

import tyro

from bench.run import SuiteConfig, main

main(tyro.cli(SuiteConfig))
