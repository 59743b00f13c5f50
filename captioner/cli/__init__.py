"""CLI: ``python -m captioner`` subcommands, one module per command family."""
