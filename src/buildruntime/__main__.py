"""``python -m buildruntime``: the same command line as ``buildruntime``."""

import sys

from buildruntime.cli import main

if __name__ == "__main__":
    sys.exit(main())
