"""`python dataprep.py`: the original project's data preparation; same flags as `kitchenware prep`."""

import sys

from kitchenware.cli import main

if __name__ == "__main__":
    sys.exit(main(command="prep"))
