"""The limits of one text query, the same for ``lexsearch query`` and a running ``lexsearch serve``.

Plain constants and one check, importing nothing heavy: the command line reads them to declare its options,
the server to check a request, the parser to refuse a query, so a query either answers alike on both paths
or is refused alike with the same line.
"""

from __future__ import annotations

from lexsearch.errors import UsageError

# Results one query may ask for. The candidate stage keeps max(CANDIDATES, top) images and the re-rank reads
# each one's forward row, so this bounds the memory and time one request can cost a server (~40 MB and a
# few hundred ms at 10,000 rows of ~300 words); a person reads far fewer, a script pages with --paths.
MAX_TOP = 10_000
# Characters of query text. A query is words; the text encoder reads a few dozen tokens of it anyway, and
# a server must not encode megabytes per request. 1,000 characters also keep the request line of the
# longest query (each character up to 4 UTF-8 bytes, each byte up to 3 characters as %XX: 12 KB) under the
# server's 64 KB request-head limit (``server.MAX_REQUEST_HEAD``).
MAX_QUERY_CHARS = 1000


def check_query_text(text: str) -> None:
    """Refuse text that no search can take: bytes that are not UTF-8, or more than MAX_QUERY_CHARS."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A name typed in a terminal set to another encoding (Latin-1 'caf\xe9'): Python holds each byte that
        # is not UTF-8 as a lone surrogate, which no tokenizer, URL or JSON can carry. Guessing the encoding
        # would search for words the user did not type.
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise UsageError(
            f"The query is not UTF-8 text ({shown}); is the terminal set to another encoding? "
            "Type it again in UTF-8."
        ) from None
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(
            f"The query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}. "
            "Give the words that matter."
        )
