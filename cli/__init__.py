"""The stackae command line (installed as the import package stackae_cli)."""
