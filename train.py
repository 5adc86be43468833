"""`python train.py`: the original project's training script; same flags as `kitchenware train`."""

import sys

from kitchenware.cli import main

if __name__ == "__main__":
    sys.exit(main(command="train"))
