"""``lexsearch dupes``: groups of near-duplicate images in a collection (it only reports; it deletes nothing)."""

from __future__ import annotations

import click

from lexsearch.cli.common import handle_errors
from lexsearch.display import shown


@click.command()
@click.option("--collection", default="default", show_default=True, help="Collection name or folder path.")
@click.option(
    "--threshold",
    metavar="T",
    help="Dense similarity (0-1] two hash-close images need to count as duplicates; lower finds more "
    "[default: 0.7].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"groups": [{"files": [{"id", "path", "width", "height", "size", "taken"}], "pairs": [...]}]}.',
)
@handle_errors
def dupes(collection: str, threshold: str | None, as_json: bool) -> None:
    """Groups of near-duplicate images: re-encoded, resized, slightly cropped or recoloured copies of one
    photo, each file with its pixel size, file size and date taken, so you can choose what to keep.

    Read from what the collection already holds (each image's dense vector and a perceptual hash taken
    when it was indexed); nothing is decoded or embedded. lexsearch never deletes, moves or changes a file:
    this command only reports. The largest group comes first.
    """
    import json

    from lexsearch.collection import open_collection
    from lexsearch.dupes import DEFAULT_THRESHOLD, check_threshold, find_dupes, missing_note
    from lexsearch.errors import UsageError

    t = DEFAULT_THRESHOLD
    if threshold is not None:
        try:
            t = float(threshold)
        except ValueError:
            raise UsageError(
                f"--threshold must be a number above 0 and at most 1, not {threshold!r}."
            ) from None
    t = check_threshold(t)
    with open_collection(collection, readonly=True) as col:
        report = find_dupes(col, t)
        note = missing_note(report, col)
    if note:
        click.echo(f"Note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    if not report.groups:
        click.echo(f"No near-duplicates among {report.images} images (threshold {t:g}).")
        return
    click.echo(format_groups(report))


def format_groups(report) -> str:
    lines = []
    files = sum(len(g.images) for g in report.groups)
    lines.append(f"{len(report.groups)} groups of near-duplicates ({files} files of {report.images}):")
    for n, g in enumerate(report.groups, 1):
        lines.append("")
        lines.append(f"group {n} ({len(g.images)} files)")
        for im in g.images:
            pixels = f"{im.width}x{im.height}" if im.width and im.height else "?"
            lines.append(f"  {pixels:>11}  {_bytes(im.size):>9}  {im.taken or '?':19}  {shown(im.path)}")
    return "\n".join(lines)


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
