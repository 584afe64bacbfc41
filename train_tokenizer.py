"""Train the multi-scale VQ tokenizer.

    accelerate launch train_tokenizer.py                 # offline demo preset (synthetic portraits)
    accelerate launch train_tokenizer.py --help          # every option
"""

import tyro

from train.tokenizer_loop import TokenizerTrainConfig, train_tokenizer

if __name__ == "__main__":
    train_tokenizer(tyro.cli(TokenizerTrainConfig))
