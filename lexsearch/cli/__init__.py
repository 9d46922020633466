"""The ``lexsearch`` command line: thin Click commands over the library (``lexsearch.cli.app``).

Each command parses flags, calls one core function and prints. Heavy imports (torch, transformers, faiss)
happen inside command bodies so ``lexsearch --help`` stays fast. Core errors (``LexsearchError``) become one
readable line and a non-zero exit code, never a traceback.

A plain ``lexsearch query TEXT`` that a running ``lexsearch serve`` of its collection can answer is answered
before Click and the commands load (``lexsearch.cli.quick``): that start is most of such a query's time.
"""

from __future__ import annotations

import sys


def main() -> None:
    from lexsearch.cli import quick

    quick.answer_and_exit(sys.argv[1:])  # returns only when the query needs the full command line
    from lexsearch.cli.app import main as run

    run()


def __getattr__(name: str) -> object:
    if name == "cli":  # the Click group, for tests and embedding: ``from lexsearch.cli import cli``
        from lexsearch.cli.app import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
