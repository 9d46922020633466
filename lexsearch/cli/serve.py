"""``lexsearch serve``: the local web page over a collection."""

from __future__ import annotations

import click

from lexsearch.cli.common import handle_errors


@click.command()
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
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="The LM's precision for new queries. auto: bf16 for an LM of Gemma 3 270M's size or more on a CPU "
    "with bf16 matrix instructions (about 4x faster there; vectors at cosine ~0.9996 to fp32), else fp32.",
)
@handle_errors
def serve(collection, host, port, open_browser, model_dir, device, threads, precision) -> None:
    """Search a collection in a local web page and see why each image matched.

    Keeps the model and the collection open; `lexsearch query` on the same collection uses the running
    server. Listens on 127.0.0.1 (this machine only) unless --host says otherwise.
    """
    from lexsearch.collection import open_collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.server import Server, is_loopback

    if not is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach this machine on the network can search "
            "the collection and see its images.",
            err=True,
        )
    col = open_collection(collection, readonly=True)
    try:
        encoder = load_encoder(col, model_dir, device)
        if getattr(encoder, "note", ""):  # e.g. why the LM answers rather than the model's student
            click.echo(f"note: {encoder.note}", err=True)
        service = SearchService(col, encoder)
        click.echo(f"Loading the model for {col.path} ...", err=True)
        service.warm_up(threads, precision)
        if service.precision == "bf16":
            click.echo("New queries run the LM in bf16 (--precision fp32: float32).", err=True)
        server = Server(service, host, port)
        click.echo(f"lexsearch serve: {server.url}/  ({col.count()} images; Ctrl-C stops)")
        if open_browser:
            import threading
            import webbrowser

            threading.Timer(0.5, webbrowser.open, args=[server.url + "/"]).start()
        server.serve()
    finally:
        col.close()
