"""``python -m csc_cli`` runs the ``csc`` command line."""

import sys

from .cli import main

sys.exit(main())
