"""``lexsearch eval retrieval|patchdis``: the paper's evaluations."""

from __future__ import annotations

import os
import sys

import click

from lexsearch.cli.common import TEXT_ENCODER, handle_errors


@click.group(name="eval")
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
@TEXT_ENCODER
@handle_errors
def eval_retrieval(
    model_dir, data, karpathy, split, sparsify, plot, sweep, batch_size, device, as_json, quiet, text_encoder
):
    """Zero-shot retrieval R@1/5/10 both ways (several captions per image), with active dims."""

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
    if karpathy:
        dataset = kp.load_karpathy(karpathy, data, split)
    else:
        from lexsearch.data.pairs import load_caption_folder

        dataset = load_caption_folder(data)

    from lexsearch.model import LazyEncoder

    # Images through the model; texts through the student or the LM, as a query would be.
    encoder = LazyEncoder(model_dir, device=device, text_encoder=text_encoder)
    used = getattr(encoder, "text_encoder", "lm")
    if getattr(encoder, "note", ""):
        click.echo(f"note: {encoder.note}", err=True)
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
@handle_errors
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
