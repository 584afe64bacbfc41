"""The one training runtime (`runtime`, `state`, `run_config`, `optim`) and the trainings on it: the
tokenizer (`tokenizer_loop`) and the transformer (`var_loop`). Presets are resolved in `presets`."""
