"""`python -m stackae_cli`, the same as the `stackae` command."""

from stackae_cli.main import cli

cli(prog_name="stackae")
