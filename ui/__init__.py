"""A local web UI (Gradio, the `ui` extra): generate with the coarse-to-fine reveal, and the model panel.

Run `nextscale-ui` (or `python -m nextscale.ui`, or `make ui`); the modules without Gradio (settings,
uploads, commands, models, generation) import without it.
"""
