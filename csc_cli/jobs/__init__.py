"""Jobs: library functions that take a typed config and return a result dataclass.

No argument parsing and no printing here; ``csc_cli.cli`` renders the results.
"""
