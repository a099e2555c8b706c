"""``python -m twin`` runs the tagtwin command line."""

from twin.cli import main

main()
