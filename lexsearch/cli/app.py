"""The Click command group: thin commands over the library.

Each command parses flags, calls one core function and prints. Heavy imports (torch, transformers, faiss)
happen inside command bodies so ``lexsearch --help`` stays fast. Core errors (``LexsearchError``) become one
readable line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from lexsearch.cli import common


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lexsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages (and decoder warnings) to stderr.")
def cli(verbose: bool) -> None:
    """Search local image collections by text, with the words that explain every match."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[common.StderrHandler()],
    )
    # Library warnings (Pillow's "Corrupt EXIF data", "Truncated File Read", ...) name no file; the
    # indexer reports each bad file itself. They go to the log, shown only with -v.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.NOTSET if verbose else logging.ERROR)
    # Pillow logs some refusals itself before raising, at ERROR ("More samples per pixel than can be
    # decoded: 200" for a hostile TIFF): a line that names no file, above the command's own line that does.
    logging.getLogger("PIL").setLevel(logging.NOTSET if verbose else logging.CRITICAL + 1)
    common.set_verbose(verbose)


def _register() -> None:
    from lexsearch.cli import demo, dupes, evaluate, index, query, serve, train

    for command in (
        train.train,
        index.index,
        query.query,
        query.explain,
        dupes.dupes,
        evaluate.eval_,
        train.distill,
        serve.serve,
        demo.demo,
    ):
        cli.add_command(command)


_register()


def main() -> None:
    try:
        cli()
    except SystemExit as exc:
        if not common.quick_exit_requested():
            raise
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (| head): nothing more can reach it
                pass
        logging.shutdown()
        os._exit(code)
