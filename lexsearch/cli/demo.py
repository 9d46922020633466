"""``lexsearch demo``: the whole loop on a generated toy world."""

from __future__ import annotations

import click

from lexsearch.cli.common import handle_errors
from lexsearch.cli.train import TrainBar, format_val


@click.command()
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
    "--preset",
    type=click.Choice(["tiny", "mini"]),
    default="tiny",
    show_default=True,
    help="tiny: a toy LM trained on the world's captions. mini: Gemma 3 270M reads the captions and the "
    "queries, so they may use other words and languages (pip install 'lexsearch[gemma]').",
)
@click.option(
    "--minutes",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Time limit for training the model (its base models and final validation included).  "
    "[default: 8 for tiny, 14 for mini]",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@handle_errors
def demo(directory, n_images, preset, minutes, seed, device) -> None:
    """Run the whole loop on a generated toy world, with no download.

    Generates coloured shapes with captions into DIRECTORY, trains the model (or reuses the one an earlier
    demo trained), indexes the images into the 'demo' collection, then queries and explains.
    """
    from lexsearch.demo import DEFAULT_MINUTES, run_demo
    from lexsearch.search import format_table

    def step(msg: str) -> None:
        click.echo(click.style("==> ", fg="blue") + msg, err=True)

    bar = TrainBar(quiet=False)
    try:
        report = run_demo(
            directory,
            n_images=n_images,
            max_minutes=minutes or DEFAULT_MINUTES[preset],
            preset=preset,
            seed=seed,
            device=device,
            step=step,
            train_progress=bar,
        )
    finally:
        bar.close()
    if report.train:
        click.echo(f"Held-out retrieval of the trained model:\n{format_val(report.train)}")
    if report.distilled:
        click.echo(f"Query encoder: the student {report.distilled}")
    if report.note:
        click.echo(f"note: {report.note}", err=True)
    click.echo(f"Queries encoded by the {'student' if report.text_encoder == 'student' else 'LM'}.")
    click.echo(f"Index: {report.index_summary}")
    for query, results in report.queries:
        click.echo(f"\n$ lexsearch query {query!r} --collection demo")
        for note in results.notes:  # as the command says them (the encoder's note is said once, above)
            if note != report.note:
                click.echo(f"note: {note}")
        click.echo(format_table(results).rstrip() if results else "No image matches this query.")
    click.echo(f"\n$ lexsearch explain {report.explained} --collection demo")
    if report.truth:
        click.echo(f"  (the image shows: {report.truth})")
    for word, weight in report.explanation:
        click.echo(f"  {weight:7.4f}  {word}")
    click.echo(f"\nHeat map of its top words: {report.heatmap}")
    click.echo('Try your own: lexsearch query "green triangle" --collection demo')
    if preset == "mini":
        click.echo('or in other words: lexsearch explain --text "un triangle vert" --collection demo')
