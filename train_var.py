"""Train the next-scale transformer on a trained tokenizer.

    accelerate launch train_var.py                 # offline demo preset (synthetic portraits, MiniLM text)
    accelerate launch train_var.py --help          # every option
"""

import tyro

from train.var_loop import VarTrainConfig, train_var

if __name__ == "__main__":
    train_var(tyro.cli(VarTrainConfig))
