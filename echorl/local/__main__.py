"""``python -m echorl.local <hydra overrides>``: train with the embedded engine."""

import sys

from echorl.local import main

if __name__ == "__main__":
    sys.exit(main())
