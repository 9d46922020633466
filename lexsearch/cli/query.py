"""``lexsearch query`` and ``lexsearch explain``: ranked images with their words, and an image's own words."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lexsearch.cli import common
from lexsearch.cli.common import TEXT_ENCODER, FiniteFloat, decoder_noise_hidden, handle_errors
from lexsearch.display import shown, utf8_text
from lexsearch.limits import MAX_TOP


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("text", nargs=-1)
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option(
    "--top",
    default=10,
    show_default=True,
    type=click.IntRange(1, MAX_TOP),
    help=f"Results to show (at most {MAX_TOP:,}; a running server takes the same).",
)
@click.option("--json", "as_json", is_flag=True, help='Print [{"rank", "path", "score", "words": [...]}].')
@click.option("--paths", "as_paths", is_flag=True, help="Print only the paths, one a line (for xargs).")
@click.option(
    "-0",
    "--null",
    "null",
    is_flag=True,
    help="Print only the paths, each ended by a NUL byte (for xargs -0; names may hold newlines).",
)
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="Search by this image instead of text (dense search; shared words still shown).",
)
@click.option("--no-rerank", is_flag=True, help="Rank by the fast candidate stage only (no exact re-rank).")
@click.option("--min-score", type=FiniteFloat(), help="Drop results scoring below this.")
@click.option("--pruned", is_flag=True, help="Approximate candidate stage (faster on huge collections).")
@click.option(
    "--expand",
    is_flag=True,
    help="Also match images that share none of the query's words, only words the model relates to them.",
)
@click.option(
    "--after",
    metavar="DATE",
    help="Only photos taken on or after DATE: 2023 (from 2023-01-01), 2023-06 (from June 1st) or 2023-06-14.",
)
@click.option(
    "--before",
    metavar="DATE",
    help="Only photos taken before DATE: 2023 (before 2023-01-01), 2023-06 or 2023-06-14 (that day excluded).",
)
@click.option(
    "--camera", metavar="TEXT", help="Only photos whose camera make + model contains TEXT (any case)."
)
@click.option(
    "--folder", metavar="PATH", help="Only images under this folder (a path), or in any folder of this name."
)
@click.option(
    "--orientation", type=click.Choice(["landscape", "portrait", "square"]), help="Only this shape."
)
@click.option(
    "--sort",
    type=click.Choice(["score", "date", "date-asc"]),
    default="score",
    show_default=True,
    help="date: the matches newest first (date-asc: oldest first), up to the best 5000 matches.",
)
@click.option("--model", "model_dir", help="Model folder (default: the collection's model).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@TEXT_ENCODER
@handle_errors
def query(
    text,
    collection,
    top,
    as_json,
    as_paths,
    null,
    image,
    no_rerank,
    min_score,
    pruned,
    expand,
    after,
    before,
    camera,
    folder,
    orientation,
    sort,
    model_dir,
    device,
    text_encoder,
) -> None:
    """Search a collection by text; each result shows the words behind the match.

    TEXT takes words, "quoted phrases", +must and -exclude words, e.g. 'white horse -night +beach'
    (quote it as one argument, or give the words as several). The photo filters can also be written in
    TEXT (a bookmarked page keeps them): after:2023 before:2024-06 camera:pixel in:trips
    orientation:portrait sort:date (in: takes a folder name or an absolute path; quote values with spaces:
    in:"my trips"). Dates are when the photo was taken (EXIF, else the file's time).
    """
    # One BLAS thread: a query's matrix products are small, and OpenBLAS's spinning workers make them 5-20x
    # slower on shared cores (bench/query_cold.py). Only effective before numpy loads; a user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    common.exit_quickly()  # a query commits its cache entry before printing; nothing is left to tear down
    import json

    from lexsearch.errors import UsageError
    from lexsearch.limits import check_query_text

    unknown = [t for t in text if t.startswith("--")]
    if unknown:
        raise UsageError(f"No such option: {unknown[0]} (see lexsearch query --help).")
    text = " ".join(text) if text else None
    meta = {"after": after, "before": before, "camera": camera, "folder": folder, "orientation": orientation}
    if text is not None and (any(meta.values()) or sort != "score"):
        from lexsearch.search.meta import with_meta

        # The options become the query's own words: a server (and the page) answer them exactly alike.
        text = with_meta(text, sort=sort, **meta)
    elif any(meta.values()) or sort != "score":
        raise UsageError("The photo filters and --sort apply to a text query, not to --image.")
    if as_json and (as_paths or null):
        raise UsageError("--json and --paths are alternatives; pick one.")
    if image and text:
        raise UsageError("Give a text or --image IMG, not both.")
    if not image and text is None:
        raise UsageError("Nothing to search for: give a text, e.g. lexsearch query 'white horse'.")
    if text is not None:
        # Refused here as the search would refuse it, before it is sent anywhere: text that is not UTF-8
        # cannot go into a request, so a running server must not see it either.
        check_query_text(text)
    results = None
    from lexsearch.collection.opening import is_qdrant

    # An explicit --text-encoder is answered here, by that encoder; a server uses its model's default.
    # Servers are found by the collection's folder: one of a Qdrant collection is reached by its address.
    if not image and model_dir is None and text_encoder == "auto" and not is_qdrant(collection):
        # A running `lexsearch serve` of this collection has the model warm: a new query costs milliseconds.
        from lexsearch.serve.client import search_via_server

        opts = {"rerank": not no_rerank, "min_score": min_score, "pruned": pruned, "expand": expand}
        answer = search_via_server(collection, text, top, **opts)
        if answer is not None:
            results, info = answer
            if common.verbose():
                click.echo(f"answered by the running server at {info.url} (pid {info.pid})", err=True)
    # The search package loads its stages on first use: a server's answer is printed without numpy.
    from lexsearch import search as s

    if results is None:
        from lexsearch.collection import open_collection

        with open_collection(collection, readonly=True) as col, decoder_noise_hidden():
            encoder = s.load_encoder(col, model_dir, device, text_encoder=text_encoder)
            if image:
                results = s.search_by_image(col, encoder, image, top=top, min_score=min_score)
            else:
                results = s.search(
                    col,
                    encoder,
                    text,
                    top=top,
                    rerank_candidates=not no_rerank,
                    min_score=min_score,
                    prune=s.PruneConfig() if pruned else None,
                    expand=expand,
                )
    if results.notes:
        from lexsearch.serve.wire import notes_text

        # The same lines whether this process searched or a server did (its answer carries them).
        click.echo(notes_text(results.notes), err=True, nl=False)
    if results.stale:
        import shlex

        from lexsearch.collection import open_collection

        with open_collection(collection, readonly=True) as col:
            roots = col.meta.get("roots") or ["DIR"]
        n = results.stale
        # Quoted, so that it runs as printed (index reuses the collection's model when --model is not given).
        update = shlex.join(["lexsearch", "index", *roots, "--collection", collection])
        click.echo(
            f"note: {n} matching file{'s' if n > 1 else ''} no longer exist{'' if n > 1 else 's'} (not shown); "
            f"the index is out of date: {shown(update)}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(s.results_to_json(results), indent=2))
    elif as_paths or null:
        click.echo(s.paths_bytes(results, end=b"\0" if null else b"\n"), nl=False)
    elif results:
        click.echo(s.format_table(results), nl=False)
    else:
        # An honest empty answer: no indexed image shares a word with the query (or passes the filters).
        click.echo("No image matches this query.")


@click.command()
@click.argument("image", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--text",
    help="Show the words this query text lights up (the vector a query with it scores), instead of IMAGE.",
)
@click.option("--model", "model_dir", help="Model folder (default: the collection's model).")
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option(
    "--top", "top_k", default=10, show_default=True, type=click.IntRange(min=1), help="Words to show."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"path", "words": [{"word", "weight"}]}; with --text {"text", "words": [...]}, every active word.',
)
@click.option(
    "--heatmap",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write a heat map here (.png, .jpg, .webp): one panel per top word, at most 6; --word: one word.",
)
@click.option("--word", help="Heat map of this one word's patch scores instead of the top words.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@TEXT_ENCODER
@handle_errors
def explain(image, text, model_dir, collection, top_k, as_json, heatmap, word, device, text_encoder) -> None:
    """Show the words an image lights up, and where (heat map); or, with --text, what a query means.

    With an indexed image the words are read from the index, i.e. from the very vector that queries score.
    With --text TEXT the words are those of the very vector a query with that text scores.
    """
    from lexsearch.errors import UsageError

    if (image is None) == (text is None):
        raise UsageError(
            "Give an IMAGE or --text TEXT (one of them), e.g. lexsearch explain --text 'white horse'."
        )
    if text is not None:
        _explain_text(text, model_dir, collection, top_k, as_json, heatmap, word, device, text_encoder)
        return
    import json

    import numpy as np

    from lexsearch.collection import open_collection
    from lexsearch.explain import explain_image, heatmap_format, weak_words_note
    from lexsearch.explain import heatmap as draw_heatmap
    from lexsearch.model.images import open_image
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.search import load_encoder

    # Every flag is checked before the networks load (torch and the weights: seconds), so a typo fails at
    # once; the encoder below is lazy: its vocabulary answers the --word check without torch.
    if word is not None and not word.strip():
        raise UsageError("--word is empty: name one word of the model's vocabulary, or leave --word out.")
    if word is not None and not heatmap:
        raise UsageError("--word picks the heat map's word: pass --heatmap FILE too.")
    if heatmap:
        heatmap_format(heatmap)  # a bad name or a missing folder is refused before any work
    with decoder_noise_hidden():
        img = open_image(image)
    indexed = None
    if model_dir is None:
        with open_collection(collection, readonly=True) as col:
            encoder = load_encoder(col, device=device)
            word_ids = _heatmap_word(encoder, word)
            # The indexer stores absolute paths as reached from its root (symlinks kept), so look up both.
            keys = list(dict.fromkeys([os.path.abspath(image), str(Path(image).resolve())]))
            rows = col.rows_at(keys)  # a lookup by path, not a read of every row
            for key in keys:
                row = rows.get(key)
                if row is not None and row.status == "ok":
                    indexed = col.forward([row.id]).get(row.id)
                    break
    else:
        encoder = LazyEncoder(model_dir, device=device, text_encoder="lm")
        word_ids = _heatmap_word(encoder, word)
    if indexed is not None:
        cols, weights = indexed
        order = np.argsort(-weights, kind="stable")[:top_k]
        words = list(zip(encoder.words(cols[order]), weights[order].tolist()))
        term_ids = [int(c) for c in cols[order]]
        vector = dict(zip(cols.tolist(), weights.tolist()))
    else:
        result = explain_image(encoder, img, top_k=top_k, path=image)
        words, term_ids, vector = result.words, result.term_ids, result.weights
    if as_json:
        click.echo(
            json.dumps(
                {"path": utf8_text(image), "words": [{"word": w, "weight": round(x, 6)} for w, x in words]}
            )
        )
    else:
        click.echo(shown(image))
        for w, x in words:
            click.echo(f"  {x:7.4f}  {w}")
        if not words:
            click.echo("  (no word passes the sparsification threshold)")
    weak = weak_words_note(encoder, img)  # after the words: it loads the model (measures the image)
    if weak:
        click.echo(f"note: {weak}", err=True)
    if heatmap:
        if word_ids:
            term_ids, labels = word_ids, [word]
        else:
            labels = [w for w, _ in words]
        # Beside each word, its weight in the image's vector: the numbers printed above, not patch scores.
        drawn = [vector.get(t, 0.0) for t in term_ids]
        out = draw_heatmap(encoder, img, term_ids, labels, Path(heatmap), weights=drawn)
        click.echo(f"heat map written to {shown(str(out))}", err=True)


def _explain_text(text, model_dir, collection, top_k, as_json, heatmap, word, device, text_encoder) -> None:
    """``explain --text``: the words of the query vector of ``text``, encoded as ``lexsearch query`` encodes
    it (the same text encoder, the collection's query cache), strongest first."""
    import json

    from lexsearch.errors import UsageError
    from lexsearch.search.meta import split_meta
    from lexsearch.search.parse import parse_query

    # Refused before anything loads: a query's text has no picture to draw on.
    if heatmap or word is not None:
        raise UsageError("--heatmap and --word draw over an image; they do not go with --text.")
    parse_query(text)  # the query's own refusals (not UTF-8, empty, too long), before the model loads
    from lexsearch.search import explain_text

    with decoder_noise_hidden():
        if model_dir is None:
            from lexsearch.collection import open_collection
            from lexsearch.search import load_encoder

            with open_collection(collection, readonly=True) as col:
                encoder = load_encoder(col, device=device, text_encoder=text_encoder)
                _note(encoder, parse_query(split_meta(text)[0]).text)
                answer = explain_text(col, encoder, text)
        else:
            from lexsearch.model.lazy import LazyEncoder

            encoder = LazyEncoder(model_dir, device=device, text_encoder=text_encoder)
            _note(encoder, parse_query(split_meta(text)[0]).text)
            answer = explain_text(None, encoder, text)
    if as_json:
        click.echo(json.dumps(answer))
        return
    click.echo(shown(text))
    for item in answer["words"][:top_k]:
        click.echo(f"  {item['weight']:7.4f}  {item['word']}")
    if not answer["words"]:
        click.echo("  (no word passes the sparsification threshold)")


def _note(encoder, text: str | None = None) -> None:
    if getattr(encoder, "note", ""):  # e.g. why the LM answers rather than the model's student
        click.echo(f"note: {encoder.note}", err=True)
    routed = encoder.text_note(text) if text is not None and hasattr(encoder, "text_note") else ""
    if routed:  # this text's words: the student was not trained on one of them
        click.echo(f"note: {routed}", err=True)


def _heatmap_word(encoder, word: str | None) -> list[int]:
    """The one vocabulary column of ``--word`` (from the vocabulary alone: no network loads), or []: the
    page's rule (``heatmap_columns``), so both draw the same column or refuse a word with the same line."""
    from lexsearch.search.explain import heatmap_columns, shown_columns

    if word is None:
        return []
    return heatmap_columns(word, encoder.word_terms, encoder.words, shown_columns(encoder.vocab.words))
