"""The ``lexsearch`` command line: thin Click commands over the library.

Each command parses flags, calls one core function and prints. Heavy imports (torch, transformers, faiss)
happen inside command bodies so ``lexsearch --help`` stays fast. Core errors (``LexsearchError``) become one
readable line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys

import click

from lexsearch.errors import LexsearchError, NotBuiltError


def _handle_errors(fn):
    """Turn library errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LexsearchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lexsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
def cli(verbose: bool) -> None:
    """Search local image collections by text, with the words that explain every match."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@cli.command()
@_handle_errors
def train() -> None:
    """Train or fine-tune a LexVLA model (GPU; the tiny preset also on CPU)."""
    raise NotBuiltError("'lexsearch train' is not built yet.")


@cli.command()
@_handle_errors
def index() -> None:
    """Embed folders of images into a collection (incremental, crash-safe)."""
    raise NotBuiltError("'lexsearch index' is not built yet.")


@cli.command()
@_handle_errors
def query() -> None:
    """Search a collection by text; each result shows the words behind the match."""
    raise NotBuiltError("'lexsearch query' is not built yet.")


@cli.command()
@_handle_errors
def explain() -> None:
    """Show the words an image lights up, and where (heat map)."""
    raise NotBuiltError("'lexsearch explain' is not built yet.")


@cli.command(name="eval")
@_handle_errors
def eval_() -> None:
    """Evaluate a model: retrieval R@K and PatchDis mIoU on a labelled set."""
    raise NotBuiltError("'lexsearch eval' is not built yet.")


@cli.command()
@_handle_errors
def demo() -> None:
    """Run the whole loop on a generated toy world, with no download."""
    raise NotBuiltError("'lexsearch demo' is not built yet.")


def main() -> None:
    cli()
