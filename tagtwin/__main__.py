"""``python -m tagtwin`` runs the tagtwin command line."""

from tagtwin.cli import main

main()
