"""The ``lexsearch`` command line: thin Click commands over the library.

Each command parses flags, calls one core function and prints. Heavy imports (torch, transformers, faiss)
happen inside command bodies so ``lexsearch --help`` stays fast. Core errors (``LexsearchError``) become one
readable line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import click

from lexsearch.display import shown, utf8_text
from lexsearch.errors import LexsearchError


def _handle_errors(fn):
    """Turn library errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LexsearchError as exc:
            click.echo(f"Error: {shown(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except sqlite3.DatabaseError as exc:  # damage found after opening (a torn page, a bad copy)
            click.echo(
                f"Error: the collection's index.db is damaged ({exc}); rebuild it with: lexsearch index "
                "DIR --model MODEL_DIR --collection NAME --rebuild",
                err=True,
            )
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


_verbose = False  # -v was given: decoder noise and library warnings are shown


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is now (``_decoder_noise_hidden`` swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@contextlib.contextmanager
def _decoder_noise_hidden():
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


class _FiniteFloat(click.ParamType):
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lexsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages (and decoder warnings) to stderr.")
def cli(verbose: bool) -> None:
    """Search local image collections by text, with the words that explain every match."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
    )
    # Library warnings (Pillow's "Corrupt EXIF data", "Truncated File Read", ...) name no file; the
    # indexer reports each bad file itself. They go to the log, shown only with -v.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.NOTSET if verbose else logging.ERROR)
    global _verbose
    _verbose = verbose


@cli.command()
@click.option(
    "--data",
    required=True,
    help="Caption folder (jsonl/csv), WebDataset shards, or a COCO captions / Karpathy split .json file.",
)
@click.option("--images", help="Image folder of a .json --data (default: beside the file).")
@click.option("--split", help="Split of a Karpathy --data file (default train; train+restval joins two).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--val-data", help="Caption folder for validation (default: a held-out part of --data).")
@click.option("--preset", type=click.Choice(["tiny", "small", "paper"]), default="tiny", show_default=True)
@click.option("--init", "init", type=click.Path(file_okay=False), help="Checkpoint to fine-tune from.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Epochs (preset default).")
@click.option("--max-minutes", type=click.FloatRange(min=0), help="Stop cleanly (checkpointed) after M min.")
@click.option("--batch-size", type=click.IntRange(min=2), help="Global batch, all ranks (preset default).")
@click.option("--micro-batch-size", type=click.IntRange(min=0), help="Per-rank forward size (exact loss).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate [paper: 5e-4].")
@click.option("--reg", type=click.Choice(["overuse", "flops"]), help="Regulariser [paper: overuse].")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def train(
    data,
    images,
    split,
    out,
    val_data,
    preset,
    init,
    epochs,
    max_minutes,
    batch_size,
    micro_batch_size,
    lr,
    reg,
    resume,
    seed,
    device,
    quiet,
) -> None:
    """Train or fine-tune a LexVLA model (GPU; the tiny preset also on CPU). Several GPUs: use torchrun."""

    from lexsearch.train.config import train_config
    from lexsearch.train.loop import train as run_training

    config = train_config(
        preset,
        data=data,
        images=images,
        split=split,
        out=out,
        val_data=val_data,
        init=init,
        epochs=epochs,
        max_minutes=max_minutes,
        batch_size=batch_size,
        micro_batch_size=micro_batch_size,
        lr=lr,
        reg=reg,
        resume=resume,
        seed=seed,
        device=device,
        quiet=quiet,
    )
    main_rank = os.environ.get("RANK", "0") == "0"
    progress = _TrainBar(quiet or not main_rank)
    try:
        result = run_training(config, progress=progress)
    finally:
        progress.close()
    if not main_rank:
        return
    state = "stopped early" if result.stopped_early else "done"
    click.echo(
        f"{state}: step {result.step}/{result.total_steps}, loss {result.loss:.4f}, "
        f"{result.steps_per_s:.2f} steps/s, {result.minutes:.1f} min -> {result.out}"
    )
    if result.val:
        click.echo(_format_val(result.val))


class _TrainBar:
    """A tqdm bar fed by the training loop's progress callback (stderr; off when quiet or not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=p.total_steps,
                initial=p.step - 1,
                desc="train",
                unit="step",
                file=sys.stderr,
                disable=self.quiet or not sys.stderr.isatty(),
                dynamic_ncols=True,
            )
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix(loss=f"{p.loss:.3f}", epoch=p.epoch, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _format_val(v: dict) -> str:
    """The final validation of a training run: R@K both ways and active dims."""
    lines = [f"  {d} " + "  ".join(f"{k} {x:.1f}" for k, x in v[d].items()) for d in ("t2i", "i2t")]
    lines.append(
        f"  active dims: image {v['active_img']:.1f}, text {v['active_txt']:.1f} "
        f"({v['n_images']} held-out images, {v['n_texts']} captions)"
    )
    if "toy" in v:  # interpretability on a toy world (lexsearch.eval.toy), each beside its control
        t = v["toy"]
        lines.append(
            f"  explanations: top-{t['k']} words name the largest shape's colour and shape for "
            f"{100 * t['explanation_precision']:.1f}% (random-codebook control "
            f"{100 * t['random_codebook_control']:.1f}%, chance {100 * t['chance']:.1f}%); top word "
            f"outside the caption {100 * t['top_word_outside_caption']:.1f}%"
        )
        if "query_words_top3" in t:
            strays = ", ".join(f"{w} {n}" for w, n in t["stray_words"].items()) or "none"
            lines.append(
                f'  queries: both words of "COLOUR SHAPE" in the query\'s top-3 words for '
                f"{100 * t['query_words_top3']:.1f}% of {t['n_queries']}; images with a function or prompt "
                f"word in their top-{t['k']}: {100 * t['stray_word_images']:.1f}% ({strays})"
            )
        if "patchdis_miou" in t:
            lines.append(
                f"  PatchDis (shape words): mIoU {t['patchdis_miou']:.1f} "
                f"(random assignment {t['patchdis_random']:.1f})"
            )
    return "\n".join(lines)


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "model_dir", required=True, help="Model checkpoint folder.")
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option("--exclude", multiple=True, help="Glob of names or paths to skip (repeatable).")
@click.option("--include-hidden", is_flag=True, help="Also index hidden files and folders.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Decode threads (0: one per core).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--rebuild", is_flag=True, help="Empty the collection first (after changing the model).")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary (warnings still go to stderr).")
@_handle_errors
def index(
    dirs, model_dir, collection, exclude, include_hidden, batch_size, workers, device, rebuild, quiet
) -> None:
    """Embed folders of images into a collection (incremental, crash-safe).

    Under torchrun (``torchrun --nproc_per_node=N -m lexsearch index ...``) the ranks share the embedding
    and rank 0 alone writes the collection.
    """
    import shlex
    import shutil

    from lexsearch.errors import ModelError
    from lexsearch.index import Collection, IndexOptions, build_index, check_roots, resolve
    from lexsearch.index.build import Shard
    from lexsearch.model.lazy import LazyEncoder

    # Everything that can be checked cheaply is checked before anything is created or loaded: a typo in a
    # folder leaves no empty collection behind, and a busy collection is refused before the model loads.
    # Every rank checks, so under torchrun each stops with the same line instead of waiting for rank 0.
    check_roots(dirs)
    if not os.path.isdir(model_dir):
        raise ModelError(f"No model at {model_dir} (expected a checkpoint folder).")
    path = resolve(collection)
    fresh = not path.exists()
    rebuild_cmd = shlex.join(
        ["lexsearch", "index", *dirs, "--model", model_dir, "--collection", collection, "--rebuild"]
    )
    options = IndexOptions(
        exclude=exclude, include_hidden=include_hidden, batch_size=batch_size, workers=workers
    )
    info, shard = None, Shard()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # launched by torchrun: join its process group
        from lexsearch.train.distributed import init_distributed

        info = init_distributed(device)
        device = str(info.device)
        shard = Shard(info.rank, info.world_size)
    progress = _IndexProgress(quiet)
    try:
        if shard.rank != 0:  # a helper rank: embeds its share of rank 0's plan, writes and prints nothing
            with _decoder_noise_hidden():
                encoder = LazyEncoder(model_dir, device=device, text_encoder="lm")
                build_index(dirs, encoder, None, options, shard=shard)
            return
        with Collection.open(collection, readonly=False, recreate=rebuild) as col, _decoder_noise_hidden():
            # Loaded only once the collection's lock is ours: a busy collection is refused at once. The
            # networks (torch) load only when a file needs embedding: an unchanged folder is a stat per file.
            encoder = LazyEncoder(model_dir, device=device, text_encoder="lm")
            progress.start()
            try:
                summary = build_index(
                    dirs,
                    encoder,
                    col,
                    options,
                    progress.reporter,
                    model_path=model_dir,
                    rebuild_command=rebuild_cmd,
                    shard=shard,
                )
            finally:
                progress.close()  # inside: the bar writes to the stderr _decoder_noise_hidden lent it
    except BaseException:
        # A collection this run created and never got to fill (the model would not load) is not left behind.
        if shard.rank == 0 and fresh and not progress.started and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        if info is not None:
            from lexsearch.train.distributed import cleanup

            cleanup(info)
    if not quiet:
        click.echo(f"{shown(str(col.path))}: {summary.line()}")


class _IndexProgress:
    """The indexer's tqdm bar and per-file warnings (stderr), fed by its ``Reporter`` callbacks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.started = False

    def start(self) -> None:
        from tqdm import tqdm

        from lexsearch.index import Reporter

        self.started = True
        # disable=None: tqdm turns itself off when stderr is not a terminal (pipes, CI logs). Made here, after
        # _decoder_noise_hidden has put Python's stderr on the real terminal.
        self.bar = tqdm(
            unit="file", file=sys.stderr, disable=True if self.quiet else None, dynamic_ncols=True
        )
        self.reporter = Reporter(
            on_total=lambda n: self.bar.reset(total=n), on_advance=self.bar.update, on_warning=self.warn
        )

    def warn(self, path: str, reason: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"warning: {shown(path)}: {shown(reason)}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_TEXT_ENCODER = click.option(
    "--text-encoder",
    type=click.Choice(["auto", "lm", "student"]),
    default="auto",
    show_default=True,
    help="Encode texts with the distilled student (no torch) or the LM; auto: the student if the model has one.",
)


# ignore_unknown_options: a query may start with an exclusion ('-night horse'), which is not an option.
@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("text", nargs=-1)
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Results to show.")
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
@click.option("--min-score", type=_FiniteFloat(), help="Drop results scoring below this.")
@click.option("--pruned", is_flag=True, help="Approximate candidate stage (faster on huge collections).")
@click.option(
    "--expand",
    is_flag=True,
    help="Also match images that share none of the query's words, only words the model relates to them.",
)
@click.option("--model", "model_dir", help="Model folder (default: the collection's model).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@_TEXT_ENCODER
@_handle_errors
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
    model_dir,
    device,
    text_encoder,
) -> None:
    """Search a collection by text; each result shows the words behind the match.

    TEXT takes words, "quoted phrases", +must and -exclude words, e.g. 'white horse -night +beach'
    (quote it as one argument, or give the words as several).
    """
    # One BLAS thread: a query's matrix products are small, and OpenBLAS's spinning workers make them 5-20x
    # slower on shared cores (bench/query_cold.py). Only effective before numpy loads; a user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import json

    from lexsearch import search as s
    from lexsearch.errors import UsageError
    from lexsearch.index.store import Collection

    unknown = [t for t in text if t.startswith("--")]
    if unknown:
        raise UsageError(f"No such option: {unknown[0]} (see lexsearch query --help).")
    text = " ".join(text) if text else None
    if as_json and (as_paths or null):
        raise UsageError("--json and --paths are alternatives; pick one.")
    if image and text:
        raise UsageError("Give a text or --image IMG, not both.")
    if not image and text is None:
        raise UsageError("Nothing to search for: give a text, e.g. lexsearch query 'white horse'.")
    results = None
    # An explicit --text-encoder is answered here, by that encoder; a server uses its model's default.
    if not image and model_dir is None and text_encoder == "auto":
        # A running `lexsearch serve` of this collection has the model warm: a new query costs milliseconds.
        from lexsearch.serve.client import search_via_server

        opts = {"rerank": not no_rerank, "min_score": min_score, "pruned": pruned, "expand": expand}
        answer = search_via_server(collection, text, top, **opts)
        if answer is not None:
            results, info = answer
            if _verbose:
                click.echo(f"answered by the running server at {info.url} (pid {info.pid})", err=True)
    if results is None:
        with Collection.open(collection, readonly=True) as col, _decoder_noise_hidden():
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
    if results.stale:
        with Collection.open(collection, readonly=True) as col:
            roots = " ".join(col.meta.get("roots") or ["DIR"])
        n = results.stale
        click.echo(
            f"note: {n} matching file{'s' if n > 1 else ''} no longer exist{'' if n > 1 else 's'} (not shown); "
            f"the index is out of date: lexsearch index {shown(roots)} --collection {shown(collection)}",
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


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.option("--model", "model_dir", help="Model folder (default: the collection's model).")
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option(
    "--top", "top_k", default=10, show_default=True, type=click.IntRange(min=1), help="Words to show."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"path", "words": [{"word", "weight"}]}.')
@click.option(
    "--heatmap",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write a heat map here (.png, .jpg, .webp): one panel per top word, at most 6; --word: one word.",
)
@click.option("--word", help="Heat map of this one word's patch scores instead of the top words.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@_handle_errors
def explain(image, model_dir, collection, top_k, as_json, heatmap, word, device) -> None:
    """Show the words an image lights up, and where (heat map).

    With an indexed image the words are read from the index, i.e. from the very vector that queries score.
    """
    import json

    import numpy as np

    from lexsearch.errors import UsageError
    from lexsearch.explain import explain_image, heatmap_format
    from lexsearch.explain import heatmap as draw_heatmap
    from lexsearch.index.store import Collection
    from lexsearch.model import Encoder
    from lexsearch.model.images import open_image
    from lexsearch.search import load_encoder

    if heatmap:
        heatmap_format(heatmap)  # a bad name or a missing folder is refused before any work
    with _decoder_noise_hidden():
        img = open_image(image)
    indexed = None
    if model_dir is None:
        with Collection.open(collection, readonly=True) as col:
            encoder = load_encoder(col, device=device)
            # The indexer stores absolute paths as reached from its root (symlinks kept), so look up both.
            rows = col.rows_by_path()
            for key in dict.fromkeys([os.path.abspath(image), str(Path(image).resolve())]):
                row = rows.get(key)
                if row is not None and row.status == "ok":
                    indexed = col.forward([row.id]).get(row.id)
                    break
    else:
        encoder = Encoder.load(model_dir, device=device)
    if indexed is not None:
        cols, weights = indexed
        order = np.argsort(-weights, kind="stable")[:top_k]
        words = list(zip(encoder.words(cols[order]), weights[order].tolist()))
        term_ids = [int(c) for c in cols[order]]
    else:
        result = explain_image(encoder, img, top_k=top_k, path=image)
        words, term_ids = result.words, result.term_ids
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
    if heatmap:
        if word:
            cols = encoder.word_terms(word)
            if not cols:
                raise UsageError(f"{word!r} is not in the model's vocabulary")
            if len(cols) > 1:
                pieces = ", ".join(encoder.words(cols))
                raise UsageError(f"{word!r} is not one vocabulary word (pieces: {pieces}); pass one of them")
            term_ids, labels = cols[:1], [word]
        else:
            labels = [w for w, _ in words]
        out = draw_heatmap(encoder, img, term_ids, labels, Path(heatmap))
        click.echo(f"heat map written to {shown(str(out))}", err=True)


@cli.command()
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback: this machine)."
)
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one)."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the web browser.")
@click.option("--model", "model_dir", help="Model folder (default: the collection's model).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for the model (default: torch's; 1 is fastest for the tiny model on a busy machine).",
)
@_handle_errors
def serve(collection, host, port, open_browser, model_dir, device, threads) -> None:
    """Search a collection in a local web page and see why each image matched.

    Keeps the model and the collection open; `lexsearch query` on the same collection uses the running
    server. Listens on 127.0.0.1 (this machine only) unless --host says otherwise.
    """
    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.server import Server, is_loopback

    if not is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach this machine on the network can search "
            "the collection and see its images.",
            err=True,
        )
    col = Collection.open(collection, readonly=True)
    try:
        service = SearchService(col, load_encoder(col, model_dir, device))
        click.echo(f"Loading the model for {col.path} ...", err=True)
        service.warm_up(threads)
        server = Server(service, host, port)
        click.echo(f"lexsearch serve: {server.url}/  ({col.count()} images; Ctrl-C stops)")
        if open_browser:
            import threading
            import webbrowser

            threading.Timer(0.5, webbrowser.open, args=[server.url + "/"]).start()
        server.serve()
    finally:
        col.close()


@cli.group(name="eval")
def eval_() -> None:
    """Evaluate a model: retrieval R@K and PatchDis mIoU on a labelled set."""


def _eval_progress(quiet: bool):
    """A tqdm wrapper for the eval core (stderr; off with --quiet or when stderr is not a terminal)."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return lambda it, total, desc: tqdm(
        it, total=total, desc=desc, disable=disable, file=sys.stderr, leave=False
    )


@eval_.command(name="retrieval")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model folder.")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(),
    help="captions.jsonl/.csv folder, or with --karpathy the image folder.",
)
@click.option(
    "--karpathy", type=click.Path(dir_okay=False), help="Karpathy split file (dataset_coco.json, ...)."
)
@click.option("--split", default="test", show_default=True, help="Split of the Karpathy file.")
@click.option("--sparsify", default="threshold", show_default=True, help="threshold | topk:K | none.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the R@1 vs active dims sweep (PNG).")
@click.option("--sweep", help="Top-k values of the --plot sweep, comma-separated (default: 4..1024).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_TEXT_ENCODER
@_handle_errors
def eval_retrieval(
    model_dir, data, karpathy, split, sparsify, plot, sweep, batch_size, device, as_json, quiet, text_encoder
):
    """Zero-shot retrieval R@1/5/10 both ways (several captions per image), with active dims."""
    import os

    from lexsearch.data import karpathy as kp
    from lexsearch.errors import UsageError
    from lexsearch.eval import retrieval as rt
    from lexsearch.eval.report import format_retrieval, to_json

    mode = rt.Sparsify.parse(sparsify)
    ks = None
    if sweep is not None:
        try:
            ks = sorted({int(k) for k in sweep.split(",") if k.strip()})
        except ValueError:
            raise UsageError(f"--sweep must be comma-separated integers, got {sweep!r}.") from None
        if not ks or ks[0] < 1:
            raise UsageError("--sweep values must be positive integers.")
        if plot is None:
            raise UsageError("--sweep only makes sense with --plot.")
    if plot is not None and not os.path.isdir(os.path.dirname(os.path.abspath(plot))):
        # Checked before encoding: a typo here should not cost a whole evaluation run.
        raise UsageError(f"Folder for --plot does not exist: {os.path.dirname(os.path.abspath(plot))}")
    dataset = kp.load_karpathy(karpathy, data, split) if karpathy else kp.load_caption_folder(data)

    from lexsearch.model import LazyEncoder

    # Images through the model; texts through the student or the LM, as a query would be.
    encoder = LazyEncoder(model_dir, device=device, text_encoder=text_encoder)
    used = getattr(encoder, "text_encoder", "lm")
    if plot is not None and ks is None:
        ks = rt.default_sweep_ks(encoder.vocab_size)
    report = rt.evaluate_retrieval(
        encoder,
        dataset.image_paths,
        dataset.captions,
        dataset.caption_image,
        mode,
        sweep_ks=ks,
        batch_size=batch_size,
        dataset=dataset.name,
        progress=_eval_progress(quiet),
    )
    if plot is not None:
        rt.plot_sweep(report.sweep, plot, reference=report)
    if as_json:
        click.echo(to_json({**report.to_dict(), "text_encoder": used}))
    else:
        click.echo(f"text encoder: {used}\n{format_retrieval(report)}")
    if plot is not None and not as_json:
        click.echo(f"\nSparsity plot written to {plot}")


@eval_.command(name="patchdis")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model folder.")
@click.option(
    "--images",
    "images_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder the annotation file's file_name entries are relative to.",
)
@click.option("--annotations", required=True, type=click.Path(dir_okay=False), help="COCO instances JSON.")
@click.option("--classes", help="Comma-separated class names to evaluate (default: all categories).")
@click.option(
    "--candidates",
    type=click.Choice(["all", "present"]),
    default="all",
    show_default=True,
    help="Classes competing per image: all, or only those annotated in it.",
)
@click.option(
    "--keep-unlabelled", is_flag=True, help="Count unlabelled pixels as errors instead of ignoring."
)
@click.option(
    "--upsample",
    type=click.Choice(["nearest", "bilinear", "patch"]),
    default="nearest",
    show_default=True,
    help="Prediction to pixels (nearest/bilinear), or compare on the patch grid.",
)
@click.option(
    "--view",
    type=click.Choice(["crop", "stretch"]),
    default="crop",
    show_default=True,
    help="Non-square images: the encoder's centre crop (rest not scored), or squashed to a square.",
)
@click.option("--no-crowd", is_flag=True, help="Leave crowd regions out of the class masks.")
@click.option("--max-images", type=click.IntRange(min=1), help="Only the first N annotated images.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random baseline.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def eval_patchdis(
    model_dir,
    images_dir,
    annotations,
    classes,
    candidates,
    keep_unlabelled,
    upsample,
    view,
    no_crowd,
    max_images,
    seed,
    device,
    as_json,
    quiet,
):
    """PatchDis mIoU: argmax class per patch vs COCO instance masks, beside a random baseline."""
    from lexsearch.eval.patchdis import CocoInstances, PatchDisOptions, evaluate_patchdis
    from lexsearch.eval.report import format_patchdis, to_json

    opts = PatchDisOptions(
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        candidates=candidates,
        ignore_unlabelled=not keep_unlabelled,
        upsample=upsample,
        view=view,
        include_crowd=not no_crowd,
        seed=seed,
        max_images=max_images,
    )
    opts.validate()
    coco = CocoInstances.load(annotations, images_dir)

    from lexsearch.model import Encoder

    encoder = Encoder.load(model_dir, device=device)
    report = evaluate_patchdis(encoder, coco, opts, progress=_eval_progress(quiet))
    click.echo(to_json(report.to_dict()) if as_json else format_patchdis(report))


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model folder.")
@click.option("--data", required=True, help="Captions to distil on: a caption folder (jsonl/csv) or shards.")
@click.option(
    "--minutes",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Time budget (labelling by the LM + training).",
)
@click.option("--epochs", "max_epochs", default=60, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def distill(model_dir, data, minutes, max_epochs, seed, device, quiet) -> None:
    """Distil the model's LM text tower into a small student query encoder (stored in the model folder).

    A collection whose model has a student encodes new queries with it, without torch: a new query then
    takes a fraction of a second. 'lexsearch query --text-encoder lm' still runs the LM.
    """
    from tqdm import tqdm

    from lexsearch.model.config import read_config
    from lexsearch.train.distill import DistillConfig, read_captions
    from lexsearch.train.distill import distill as run_distill

    read_config(Path(model_dir))  # a clear error for a folder that is not a model, before loading torch
    captions = read_captions(data)
    disable = quiet or not sys.stderr.isatty()
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            desc = "labelling texts with the LM" if stage == "label" else "training the student"
            bars[stage] = tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, leave=False)
        bars[stage].update(done - bars[stage].n)

    cfg = DistillConfig(minutes=minutes, max_epochs=max_epochs, seed=seed, device=device)
    try:
        result = run_distill(model_dir, captions, cfg, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if not quiet:
        click.echo(
            f"Student written to {result.student_dir} ({result.texts} texts, {result.epochs:.1f} epochs, "
            f"{result.minutes:.1f} min; held-out cosine to the LM {result.cosine:.3f})"
        )


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--images",
    "n_images",
    default=2500,
    show_default=True,
    type=click.IntRange(min=20),
    help="Size of the generated toy world (a fifth, at most 500, is held out for validation).",
)
@click.option(
    "--minutes",
    default=8.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Time limit for training the tiny model.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@_handle_errors
def demo(directory, n_images, minutes, seed, device) -> None:
    """Run the whole loop on a generated toy world, with no download.

    Generates coloured shapes with captions into DIRECTORY, trains the tiny model (or reuses the one an
    earlier demo trained), indexes the images into the 'demo' collection, then queries and explains.
    """
    from lexsearch.demo import run_demo
    from lexsearch.search import format_table

    def step(msg: str) -> None:
        click.echo(click.style("==> ", fg="blue") + msg, err=True)

    bar = _TrainBar(quiet=False)
    try:
        report = run_demo(
            directory,
            n_images=n_images,
            max_minutes=minutes,
            seed=seed,
            device=device,
            step=step,
            train_progress=bar,
        )
    finally:
        bar.close()
    if report.train:
        click.echo(f"Held-out retrieval of the trained model:\n{_format_val(report.train)}")
    click.echo(f"Index: {report.index_summary}")
    for query, results in report.queries:
        click.echo(f"\n$ lexsearch query {query!r} --collection demo")
        click.echo(format_table(results).rstrip() if results else "No image matches this query.")
    click.echo(f"\n$ lexsearch explain {report.explained} --collection demo")
    if report.truth:
        click.echo(f"  (the image shows: {report.truth})")
    for word, weight in report.explanation:
        click.echo(f"  {weight:7.4f}  {word}")
    click.echo(f"\nHeat map of its top words: {report.heatmap}")
    click.echo('Try your own: lexsearch query "green triangle" --collection demo')


def main() -> None:
    cli()
