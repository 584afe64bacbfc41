"""Train the multi-scale VQ tokenizer.

    accelerate launch train_tokenizer.py                 # offline demo preset (synthetic portraits)
    accelerate launch train_tokenizer.py --help          # every option
"""

from nextscale.train.tokenizer_loop import cli

if __name__ == "__main__":
    cli()
