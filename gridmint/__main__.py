"""`python -m gridmint` runs the command line."""

from gridmint.cli import main

main()
