"""What every command shares: library errors as one line, decoder noise kept off the terminal unless -v,
option types. Nothing here imports torch."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
import sys

import click

from lexsearch.display import shown
from lexsearch.errors import LexsearchError


def handle_errors(fn):
    """Turn library errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LexsearchError as exc:
            click.echo(f"Error: {shown(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except sqlite3.DatabaseError as exc:  # damage found after opening (a torn page, a bad copy)
            from lexsearch.index.store import rebuild_command

            # The collection's record beside index.db names its folders and model: the command runs as printed.
            command = rebuild_command(kwargs.get("collection") or "default")
            click.echo(
                f"Error: the collection's index.db is damaged ({exc}); rebuild it with: {command}", err=True
            )
            sys.exit(1)
        except KeyboardInterrupt as exc:  # its text, when a command gives one, says what was kept
            click.echo(f"Interrupted: {exc}" if str(exc) else "Interrupted.", err=True)
            sys.exit(130)

    return wrapper


_quick_exit = False  # the command asked to end without the interpreter's teardown (see exit_quickly)


def exit_quickly() -> None:
    """End this process without tearing its modules down once the command is done. For one-shot commands
    that write nothing they have not committed (``lexsearch query``): freeing numpy, SQLite and the mapped
    files one object at a time is ~40 ms of a ~300 ms fresh query, against ~8 ms for ``os._exit``."""
    global _quick_exit
    _quick_exit = True


def quick_exit_requested() -> bool:
    return _quick_exit


_verbose = False  # -v was given: decoder noise and library warnings are shown


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def verbose() -> bool:
    return _verbose


class StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is now (``decoder_noise_hidden`` swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@contextlib.contextmanager
def decoder_noise_hidden():
    """Keep what C decoders write straight to file descriptor 2 (libtiff's ``TIFFFetchNormalTag ...``,
    ``TIFFReadDirectory: Warning ...``) off the terminal unless ``-v`` is given.

    Those lines name no file and bury the per-file warnings that matter; Python's own stderr (warnings,
    the progress bar, messages) is moved to a copy of the real descriptor, and descriptor 2 to a scratch
    file, dropped at the end (replayed if the command dies of an unexpected error, so nothing that explains
    a crash is lost).
    """
    if _verbose:
        yield
        return
    try:
        sys.stderr.flush()
        uses_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's capture object: Python output is safe
        uses_fd2 = False
    import tempfile  # here: a query answered by a server never needs it (~10 ms of its start)

    saved = os.dup(2)
    sink = tempfile.TemporaryFile()  # closed in the finally below
    os.dup2(sink.fileno(), 2)
    old_stderr = sys.stderr
    if uses_fd2:
        sys.stderr = open(
            os.dup(saved),
            "w",
            buffering=1,
            encoding=old_stderr.encoding,
            errors=old_stderr.errors,
        )
    failed = False
    try:
        yield
    except (LexsearchError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        failed = True
        raise
    finally:
        if uses_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)
        if failed:
            sink.seek(0)
            os.write(2, sink.read())
        sink.close()


class FiniteFloat(click.ParamType):
    """A float that is a number: 'nan' and 'inf' would silently drop every result or none."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


TEXT_ENCODER = click.option(
    "--text-encoder",
    type=click.Choice(["auto", "lm", "student"]),
    default="auto",
    show_default=True,
    help="Encode texts with the distilled student (no torch) or the LM; auto: the student if the model has one.",
)


# ignore_unknown_options: a query may start with an exclusion ('-night horse'), which is not an option.
