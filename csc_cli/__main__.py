"""``python -m csc_cli`` runs the ``csc`` command line."""

from .cli import main

main()
