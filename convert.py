"""`python convert.py`: the original project's SavedModel conversion; same flags as `kitchenware export`."""

import sys

from kitchenware.cli import main

if __name__ == "__main__":
    sys.exit(main(command="export"))
