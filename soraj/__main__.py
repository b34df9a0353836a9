"""`python -m soraj` runs the `soraj` command."""

from soraj.cli import main

main()
