"""Train the next-scale transformer on a trained tokenizer.

    accelerate launch train_var.py                 # offline demo preset (synthetic portraits, MiniLM text)
    accelerate launch train_var.py --help          # every option
"""

from nextscale.train.var_loop import cli

if __name__ == "__main__":
    cli()
