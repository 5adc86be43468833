"""`python test.py [URL_OR_PATH ...] [--gateway URL] [--explain]`: the original project's client; same as `kitchenware classify`."""

import sys

from kitchenware.cli import main

if __name__ == "__main__":
    sys.exit(main(command="classify"))
