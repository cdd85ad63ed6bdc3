"""``python -m cmbdet``: the same as the ``cmbdet`` command."""

import sys

from cmbdet.cli import main

if __name__ == "__main__":
    sys.exit(main())
