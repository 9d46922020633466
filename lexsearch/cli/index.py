"""``lexsearch index``: embed folders into a collection (incremental, crash-safe, torchrun-sharded)."""

from __future__ import annotations

import os
import sys

import click

from lexsearch.cli.common import decoder_noise_hidden, handle_errors
from lexsearch.display import shown


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--model",
    "model_dir",
    help="Model checkpoint folder (default: the model that wrote the collection; a new one needs it).",
)
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option("--exclude", multiple=True, help="Glob of names or paths to skip (repeatable).")
@click.option("--include-hidden", is_flag=True, help="Also index hidden files and folders.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Decode threads (0: one per core).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--rebuild", is_flag=True, help="Empty the collection first (after changing the model).")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary (warnings still go to stderr).")
@click.option(
    "--watch",
    is_flag=True,
    help="After indexing, keep watching the folders and apply each change (Ctrl-C stops).",
)
@click.option(
    "--debounce",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --watch: apply changes once the folders have been quiet this long (default 2).",
)
@handle_errors
def index(
    dirs,
    model_dir,
    collection,
    exclude,
    include_hidden,
    batch_size,
    workers,
    device,
    rebuild,
    quiet,
    watch,
    debounce,
) -> None:
    """Embed folders of images into a collection (incremental, crash-safe).

    With --watch the command stays on after the first run: new, changed, moved and deleted images (and new
    folders) are applied a couple of seconds after the folders go quiet, one line per batch, with the model
    loaded once. The watch holds the collection's writer lock until it ends; queries are not affected.

    Under torchrun (``torchrun --nproc_per_node=N -m lexsearch index ...``) the ranks share the embedding
    and rank 0 alone writes the collection.
    """
    import shlex
    import shutil

    from lexsearch.collection.opening import is_qdrant
    from lexsearch.errors import ModelError, UsageError
    from lexsearch.index import Collection, IndexOptions, build_index, check_roots, resolve
    from lexsearch.model.config import read_config

    # Everything that can be checked cheaply is checked before anything is created or loaded: a typo in a
    # folder leaves no empty collection behind, and a busy collection is refused before the model loads.
    # Every rank checks, so under torchrun each stops with the same line instead of waiting for rank 0.
    roots = check_roots(dirs)
    qdrant = is_qdrant(collection)
    if debounce is not None and not watch:
        raise UsageError("--debounce goes with --watch.")
    if watch and qdrant:
        raise UsageError(
            "--watch keeps embedded collections only; for a Qdrant collection run 'lexsearch index' "
            "from cron instead (see the README)."
        )
    if watch and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("--watch runs in one process, not under torchrun.")
    if qdrant:  # read only when needed: the in-process engine is one process's at a time (torchrun ranks)
        path, fresh = None, False
        recorded = _qdrant_recorded(collection) if model_dir is None else {}
    else:
        path = resolve(collection)
        fresh = not path.exists()
        recorded = recorded_model_and_roots(path)
    if model_dir is None:
        model_dir = recorded.get("model_path")
        if not model_dir:
            unreadable = "" if fresh or qdrant else ", or its index.db cannot be read"
            raise UsageError(
                f"Collection {collection if qdrant else shown(str(path))} records no model (it was never "
                f"indexed{unreadable}); give the model that should index it: --model MODEL_DIR"
            )
    if not os.path.isdir(model_dir):
        raise ModelError(f"No model at {model_dir} (expected a checkpoint folder).")
    read_config(model_dir)  # a folder that is not a complete model is refused before anything is created
    # A rebuild empties the whole collection, so the command that does it names every folder it holds
    # (those that still exist), not only the ones given now: pasted, it loses nothing.
    held = [r for r in recorded.get("roots") or [] if os.path.exists(r)]
    rebuild_cmd = shlex.join(
        [
            "lexsearch",
            "index",
            *dict.fromkeys([*held, *roots]),
            "--model",
            os.path.abspath(model_dir),
            "--collection",
            collection,
            "--rebuild",
        ]
    )
    options = IndexOptions(
        exclude=exclude, include_hidden=include_hidden, batch_size=batch_size, workers=workers
    )
    info, device, shard = _join_torchrun(device)
    if qdrant:  # every rank writes its own points: no rank 0 writer
        return _index_qdrant(
            dirs, model_dir, collection, options, info, device, shard, rebuild, rebuild_cmd, quiet
        )
    progress = _IndexProgress(quiet)
    try:
        if shard.rank != 0:  # a helper rank: embeds its share of rank 0's plan, writes and prints nothing
            from lexsearch.model.lazy import LazyEncoder

            with decoder_noise_hidden():
                encoder = LazyEncoder(model_dir, device=device, text_encoder="lm")
                build_index(dirs, encoder, None, options, shard=shard)
            return
        with Collection.open(collection, readonly=False, recreate=rebuild) as col, decoder_noise_hidden():
            # Opened first: a busy collection is refused at once, before the model loads.
            if watch:
                return _watch(roots, col, options, progress, model_dir, device, rebuild_cmd, quiet, debounce)
            summary = _embed(build_index, dirs, col, options, progress, model_dir, device, rebuild_cmd, shard)
    except BaseException:
        # A collection this run created and never got to fill (the model would not load) is not left behind.
        if shard.rank == 0 and fresh and not progress.started and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        _leave_torchrun(info)
    if not quiet:
        click.echo(f"{shown(str(col.path))}: {summary.line()}")


def recorded_model_and_roots(path) -> dict:
    """``model_path`` and ``roots`` as the collection at ``path`` records them ({} for a new collection or
    an index.db that cannot be read): read directly, without the writer's lock or a migration."""
    import json
    import sqlite3

    from lexsearch.index.store import read_record

    db = path / "index.db"
    if not db.is_file():
        return read_record(path)  # index.db lost: the record beside it still names the folders and model
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute("SELECT key, value FROM meta WHERE key IN ('model_path', 'roots')").fetchall()
        finally:
            conn.close()
        return {key: json.loads(value) for key, value in rows}
    except (sqlite3.Error, ValueError):
        return read_record(path)  # index.db damaged: the record beside it still names them


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
        # decoder_noise_hidden has put Python's stderr on the real terminal.
        self.bar = tqdm(
            unit="file", file=sys.stderr, disable=True if self.quiet else None, dynamic_ncols=True
        )
        self.reporter = Reporter(
            on_total=lambda n: self.bar.reset(total=n),
            on_advance=self.bar.update,
            on_warning=self.warn,
            on_model_loading=self.model_loading,
            on_model_loaded=self.model_loaded,
        )

    def model_loading(self) -> None:
        self.bar.set_description_str("loading the model", refresh=True)

    def model_loaded(self, seconds: float) -> None:
        from tqdm import tqdm

        # The load is not the files' time: left out of the bar's elapsed time, rate and ETA.
        self.bar.set_description_str("", refresh=False)
        self.bar.unpause()
        if not self.bar.disable:
            tqdm.write(f"model loaded in {seconds:.1f}s", file=sys.stderr)

    def warn(self, path: str, reason: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"warning: {shown(path)}: {shown(reason)}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _join_torchrun(device: str):
    """(info, device, shard): the torchrun process group this run joins and its share, or none."""
    from lexsearch.index.build import Shard

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None, device, Shard()
    from lexsearch.train.distributed import init_distributed

    info = init_distributed(device)  # launched by torchrun: join its process group
    return info, str(info.device), Shard(info.rank, info.world_size)


def _leave_torchrun(info) -> None:
    if info is not None:
        from lexsearch.train.distributed import cleanup

        cleanup(info)


def _embed(build, dirs, col, options, progress, model_dir, device, rebuild_cmd, shard, encoder=None):
    """Bring ``col`` up to date with ``dirs`` through ``build`` (the embedded store's or Qdrant's), with
    the progress bar around it. The networks (torch) load only when a file needs embedding: an unchanged
    folder is a stat per file."""
    from lexsearch.model.lazy import LazyEncoder

    encoder = encoder or LazyEncoder(model_dir, device=device, text_encoder="lm")
    progress.start()
    try:
        return build(
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
        progress.close()  # inside: the bar writes to the stderr decoder_noise_hidden lent it


def _watch(roots, col, options, progress, model_dir, device, rebuild_cmd, quiet, debounce) -> None:
    """``lexsearch index --watch``: the normal run, then one index run per quiet spell after changes, with
    the same encoder (its networks load once, on the first file to embed) and the collection kept open.
    Ends on Ctrl-C or SIGTERM with one line of totals (exit 130, as any interrupted index run)."""
    import time

    from lexsearch.index import Reporter, build_index
    from lexsearch.index.build import IndexInterrupted
    from lexsearch.index.watch import DEFAULT_DEBOUNCE_S, FolderWatch, WatchTotals, batch_line, keep_in_step
    from lexsearch.model.lazy import LazyEncoder

    encoder = LazyEncoder(model_dir, device=device, text_encoder="lm")
    debounce = DEFAULT_DEBOUNCE_S if debounce is None else debounce
    totals = WatchTotals()
    # Started before the first run, so that nothing that changes during it is missed.
    watch = FolderWatch(roots, debounce_s=debounce, ignore=[col.path])
    sigterm = _sigterm_as_interrupt()
    started = time.monotonic()
    watching = False
    try:
        with watch:
            summary = _embed(
                build_index, roots, col, options, progress, model_dir, device, rebuild_cmd, None, encoder
            )
            if not quiet:
                click.echo(f"{shown(str(col.path))}: {summary.line()}")
                click.echo(
                    f"watching {len(roots)} folder{'s' if len(roots) != 1 else ''} for changes "
                    f"(applied after {debounce:g}s of quiet; Ctrl-C stops)",
                    err=True,
                )
            watching = True
            # Batches print no bar: a line each (below); a file that fails still gets its warning.
            reporter = Reporter(on_warning=progress.warn)

            def run():
                return build_index(
                    roots, encoder, col, options, reporter, model_path=model_dir, rebuild_command=rebuild_cmd
                )

            def report(s) -> None:
                if not quiet:
                    click.echo(f"{time.strftime('%H:%M:%S')} {batch_line(s)}")

            keep_in_step(watch, run, on_batch=report, totals=totals)
    except KeyboardInterrupt as exc:
        if not watching:
            raise  # the first run's own message (how many files it saved)
        cut = ""
        if isinstance(exc, IndexInterrupted) and exc.todo:
            cut = f"; the last batch stopped early ({exc.saved} of {exc.todo} files saved, the next run does the rest)"
        raise KeyboardInterrupt(
            f"stopped watching after {_duration(time.monotonic() - started)}; {totals.batches} "
            f"batch{'es' if totals.batches != 1 else ''} applied: {totals.line()}{cut}"
        ) from None
    finally:
        _restore(sigterm)


def _duration(seconds: float) -> str:
    """``42s``, ``17 min``, ``3h05``: how long a watch ran."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, rest = divmod(int(seconds) // 60, 60)
    return f"{hours}h{rest:02d}"


def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a service manager's stop) ends a watch as Ctrl-C does: the batch under way commits
    what it embedded and the totals are printed. Returns the handler to restore (None: not installed)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _qdrant_recorded(collection: str) -> dict:
    """``model_path`` and ``roots`` as a Qdrant collection records them ({} for one not created yet)."""
    from lexsearch.collection import open_collection
    from lexsearch.errors import CollectionNotFoundError

    try:
        with open_collection(collection, readonly=True) as col:
            return col.meta
    except CollectionNotFoundError:
        return {}


def _index_qdrant(dirs, model_dir, collection, options, info, device, shard, rebuild, rebuild_cmd, quiet):
    """``lexsearch index`` into Qdrant: every rank (torchrun) scans, embeds and writes its own points."""
    from lexsearch.collection.qdrant.build import build_qdrant
    from lexsearch.collection.qdrant.store import QdrantCollection

    progress = _IndexProgress(quiet or shard.rank != 0)
    try:
        if rebuild and info is not None:
            raise click.UsageError("--rebuild under torchrun: empty the collection in one process first.")
        with (
            QdrantCollection.open(collection, readonly=False, recreate=rebuild) as col,
            decoder_noise_hidden(),
        ):
            summary = _embed(
                build_qdrant, dirs, col, options, progress, model_dir, device, rebuild_cmd, shard
            )
    finally:
        _leave_torchrun(info)
    if not quiet and shard.rank == 0:
        click.echo(f"{shown(collection)}: {summary.line()}")
