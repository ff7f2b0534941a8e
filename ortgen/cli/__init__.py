"""The `ortgen` command line: thin commands (parse → one library call → print); user errors of
every kind become one line on stderr and a non-zero exit code, in one place (`app.py`)."""

# importing a command module registers its commands on `app`, in this (the help's) order
from ortgen.cli import export, generation, commands  # noqa: F401, I001
from ortgen.cli.app import EXIT_ERROR, EXIT_USAGE, app, main
from ortgen.cli.flags import flag_names
from ortgen.cli.generation import API_ONLY, GENERATION_OPTIONS

__all__ = [
    "API_ONLY",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "GENERATION_OPTIONS",
    "app",
    "flag_names",
    "main",
]
