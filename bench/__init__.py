"""nextscale's performance suite (`python -m bench`): see bench/run.py and docs/performance.md."""
