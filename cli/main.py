"""The `stackae` command: a thin click shell over the stackae library."""

from importlib.metadata import version

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("stackae"), prog_name="stackae")
def cli():
    """Denoising and stacked denoising autoencoders for Keras 3."""
