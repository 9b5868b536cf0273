"""`python -m stackae_cli`, the same as the `stackae` command."""

from stackae_cli import main

main()
