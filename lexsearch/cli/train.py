"""``lexsearch train`` and ``lexsearch distill``: the training loop and the student query encoder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lexsearch.cli.common import handle_errors


@click.command()
@click.option(
    "--data",
    required=True,
    help="Caption folder (jsonl/csv), WebDataset shards, or a COCO captions / Karpathy split .json file.",
)
@click.option("--images", help="Image folder of a .json --data (default: beside the file).")
@click.option("--split", help="Split of a Karpathy --data file (default train; train+restval joins two).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--val-data", help="Caption folder for validation (default: a held-out part of --data).")
@click.option(
    "--preset", type=click.Choice(["tiny", "mini", "small", "paper"]), default="tiny", show_default=True
)
@click.option("--init", "init", type=click.Path(file_okay=False), help="Checkpoint to fine-tune from.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Epochs (preset default).")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0),
    help="Bound the whole command to M min (base pretraining included); stops cleanly, checkpointed.",
)
@click.option("--batch-size", type=click.IntRange(min=2), help="Global batch, all ranks (preset default).")
@click.option("--micro-batch-size", type=click.IntRange(min=0), help="Per-rank forward size (exact loss).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate [paper: 5e-4].")
@click.option(
    "--reg",
    type=click.Choice(["overuse", "flops"]),
    help="Regulariser [paper: overuse; the tiny preset: flops].",
)
@click.option(
    "--freeze-text/--train-text",
    "freeze_text",
    default=None,
    help="Freeze the text tower and train against cached caption vectors (default: mini on a CPU).",
)
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
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
    freeze_text,
    resume,
    seed,
    device,
    quiet,
) -> None:
    """Train or fine-tune a LexVLA model (GPU; the tiny preset also on CPU). Several GPUs: use torchrun.

    --max-minutes bounds the whole command: the tiny preset's base pretraining counts (up to 60% of it when
    the bases are not cached yet), and so do the last checkpoint and the final validation.
    """
    import time

    started = time.monotonic()  # --max-minutes counts from here, torch's import included
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
        freeze_text=freeze_text,
        seed=seed,
        device=device,
        quiet=quiet,
    )
    main_rank = os.environ.get("RANK", "0") == "0"
    progress = TrainBar(quiet or not main_rank)
    try:
        result = run_training(config, progress=progress, started=started)
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(interrupted_state(Path(config.out))) from exc
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
        click.echo(format_val(result.val))
    from lexsearch.cli.common import exit_quickly

    # Everything is written and closed: tearing torch and transformers down object by object took ~5 s at
    # the end of a run on a busy 2-core machine, time --max-minutes is meant to bound.
    exit_quickly()


def interrupted_state(out: Path) -> str:
    """What a run stopped by Ctrl-C left in ``out``: the line printed after "Interrupted:"."""
    from lexsearch.config import load_json
    from lexsearch.model.config import fingerprint
    from lexsearch.train.state import STATE_JSON

    try:
        state = load_json(out / STATE_JSON)
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict) or "step" not in state:
        if out.is_dir() and any(out.iterdir()):
            return f"no checkpoint was saved yet, nothing to resume; delete {out} to start again"
        return "no checkpoint was saved yet, nothing to resume"
    step, total = state["step"], state.get("total_steps", "?")
    try:
        whole = fingerprint(out) == state.get("model_fingerprint")
    except OSError:
        whole = False
    if not whole:  # stopped between writing the weights and the state that goes with them
        return f"stopped while saving step {step}/{total}: the checkpoint in {out} cannot be resumed exactly"
    return f"the checkpoint of step {step}/{total} is kept in {out}; add --resume to the same command to continue"


class TrainBar:
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


def format_val(v: dict) -> str:
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
        if "wrong_world_word_images" in t:
            wrong = ", ".join(f"{w} {n}" for w, n in t["wrong_world_words"].items()) or "none"
            lines.append(
                f"  mistakes: images with a colour or shape in their top-{t['k']} that none of their objects "
                f"has: {100 * t['wrong_world_word_images']:.1f}% ({wrong})"
            )
        if "patchdis_miou" in t:
            lines.append(
                f"  PatchDis (shape words): mIoU {t['patchdis_miou']:.1f} "
                f"(random assignment {t['patchdis_random']:.1f})"
            )
    return "\n".join(lines)


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Model folder.")
@click.option("--data", required=True, help="Captions to distil on: a caption folder (jsonl/csv) or shards.")
@click.option(
    "--minutes",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Time budget (labelling by the LM + training).",
)
@click.option(
    "--max-minutes",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Hard cap: a student that has not passed the quality check by --minutes trains on up to this "
    "[default: 3 x --minutes].",
)
@click.option("--epochs", "max_epochs", default=60, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--steps", "max_steps", default=None, type=click.IntRange(min=1), help="A step budget (a hard limit)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def distill(model_dir, data, minutes, max_minutes, max_epochs, max_steps, seed, device, quiet) -> None:
    """Distil the model's LM text tower into a small student query encoder (stored in the model folder).

    A collection whose model has a student encodes new queries with it, without torch: a new query then
    takes a fraction of a second. The student is used only if it passes a quality check against the LM on
    held-out texts (printed at the end; exit status 1 when it fails). 'lexsearch query --text-encoder lm'
    still runs the LM.
    """
    from tqdm import tqdm

    from lexsearch.model.config import read_config
    from lexsearch.train.distill import DistillConfig, read_captions, read_images
    from lexsearch.train.distill import distill as run_distill

    read_config(Path(model_dir))  # a clear error for a folder that is not a model, before loading torch
    captions = read_captions(data)
    cfg = DistillConfig(
        minutes=minutes,
        max_minutes=max_minutes or 0.0,
        max_epochs=max_epochs,
        max_steps=max_steps or 0,
        seed=seed,
        device=device,
    )
    images = read_images(data, cfg.bank_size)  # the ranking term scores against these images' vectors
    disable = quiet or not sys.stderr.isatty()
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            desc = "labelling texts with the LM" if stage == "label" else "training the student"
            bars[stage] = tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, leave=False)
        bars[stage].update(done - bars[stage].n)

    try:
        result = run_distill(model_dir, captions, cfg, progress=progress, images=images)
    finally:
        for bar in bars.values():
            bar.close()
    from lexsearch.model.student import gate_figures

    figures = gate_figures(result.figures)
    if not quiet:
        where = "Student written to" if not result.kept_previous else "Student (not kept) trained for"
        click.echo(
            f"{where} {result.student_dir} ({result.texts} texts, {result.steps} steps = {result.epochs:.1f} "
            f"epochs, {result.minutes:.1f} min{', past --minutes to reach the check' if result.extended else ''})"
        )
        click.echo(
            f"Held-out agreement with the LM: {figures}"
            + (
                f"; top-10 overlap with the LM's ranking of the {result.bank} {result.overlap:.2f}"
                if result.bank
                else ""
            )
        )
    if result.passed:
        if not quiet:
            click.echo("Quality check passed: queries of this model's collections use the student.")
        return
    kept = " (the folder keeps its earlier student, which passed)" if result.kept_previous else ""
    click.echo(
        f"Quality check failed ({figures}): queries keep using the LM{kept}; distil longer "
        f"(--minutes, --max-minutes).",
        err=True,
    )
    sys.exit(1)
