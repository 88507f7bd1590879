"""``python -m ggrun`` runs the CLI."""

from ggrun.cli.app import main

main()
