"""``python -m echorl.local <hydra overrides>``: train with the embedded engine (``echorl train``)."""

import sys

from echorl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
