"""``lexsearch demo``: the whole loop on a generated toy world, with no download.

1. generate a toy world of coloured shapes with captions (``lexsearch.data.toyworld``);
2. train the ``tiny`` preset on it (pretraining its tiny bases first), or reuse the model a previous demo
   trained with the same settings (kept under ``LEXSEARCH_HOME/models``);
3. distil its text tower into the student query encoder (``lexsearch.train.distill``), so queries need no
   torch; a student that fails its quality check against the LM is not used: the queries then go through
   the LM, and the report says why;
4. index the images into the ``demo`` collection;
5. run a few queries (operators and an honest empty result included) and explain one image.

The core returns a ``DemoReport``; the CLI prints it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lexsearch.config import home

log = logging.getLogger(__name__)

DEMO_QUERIES = (
    "a red circle",
    "blue square and a yellow star",
    "triangle -green",
    "+purple cross",
    "zebra",  # no image matches a word the world never shows: an empty result, not random images
)
# The mini preset (Gemma 3 270M reads the queries) is asked in other words and languages too: none of these
# words is in the toy world's captions.
MINI_QUERIES = (
    "a red circle",
    "crimson disc",
    "emerald box",
    "un cercle rouge",
    "una estrella amarilla",
    "triangle -green",
)
DEMO_PRESETS = ("tiny", "mini")
DEFAULT_MINUTES = {"tiny": 8.0, "mini": 14.0}
DEMO_COLLECTION = "demo"
MODEL_DONE = "demo_complete.json"
# The student's share of the demo's time: on the toy world it reaches the LM's retrieval in well under a
# minute on an idle 2-core CPU; on a busy one it trains on past that, up to the cap, until it passes its
# quality check (docs/student.md), or the demo's queries use the LM.
DISTILL_MINUTES = 0.75
DISTILL_MAX_MINUTES = 2.0


@dataclass
class DemoReport:
    world: Path
    model: Path
    model_reused: bool
    train: dict | None  # final validation of training (None when the model was reused)
    index_summary: str
    queries: list[tuple[str, list]] = field(default_factory=list)  # (query, [search.Result])
    explained: Path | None = None
    explanation: list[tuple[str, float]] = field(default_factory=list)
    heatmap: Path | None = None
    truth: str = ""  # the explained image's caption, to compare the words with
    text_encoder: str = "lm"  # what encoded the queries: "student" or "lm"
    note: str = ""  # why the queries did not go through the student, when they did not
    distilled: str = ""  # the distillation's outcome, one line ("" when an earlier demo's student was reused)


# Raised when what a demo model holds changes, so an earlier demo's model is not reused: 2 records its
# training words (the unknown-word note, the prompt-word mask) and its images' word margins (explain's caveat).
DEMO_MODEL_VERSION = 2


def _model_key(n_images: int, seed: int, minutes: float, preset: str = "tiny") -> str:
    from lexsearch import __version__

    payload = {"v": __version__, "model": DEMO_MODEL_VERSION, "n": n_images, "seed": seed, "minutes": minutes}
    if preset != "tiny":  # (the tiny demo's key is unchanged, so its earlier models are reused)
        payload["preset"] = preset
        payload["preset_model"] = 3  # 3: sparsified at its own cut-off, on the captions' words
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_demo(
    out_dir: str | Path,
    n_images: int = 2500,
    max_minutes: float = 8.0,
    seed: int = 0,
    device: str = "auto",
    step: Callable[[str], None] | None = None,
    train_progress: Callable | None = None,
    index_reporter=None,
    distill_steps: int = 0,
    preset: str = "tiny",
) -> DemoReport:
    """Run the demo into ``out_dir`` (world, heat map); the model goes to LEXSEARCH_HOME/models.

    ``distill_steps``: a step budget for distilling the student (0: the time budget alone). ``preset``
    "mini" trains the tiny ViT against Gemma 3 270M (``pip install 'lexsearch[gemma]'``) and asks the
    queries of ``MINI_QUERIES``, through Gemma itself (no student is distilled: labelling its training
    texts through Gemma would take longer than the rest of the demo)."""
    from lexsearch.data.toyworld import generate_toy_world, read_labels
    from lexsearch.errors import UsageError
    from lexsearch.index.build import build_index
    from lexsearch.index.store import Collection
    from lexsearch.model import Encoder
    from lexsearch.search import search
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import train

    if preset not in DEMO_PRESETS:
        raise UsageError(f"unknown demo preset {preset!r}; choose one of {', '.join(DEMO_PRESETS)}")
    if preset == "mini":
        from lexsearch.model.gguf import GEMMA_3_270M, require_base

        require_base(GEMMA_3_270M)  # the install hint now, not after the world is generated
    say = step or (lambda msg: None)
    out_dir = Path(out_dir).expanduser().resolve()
    world = out_dir / "world"
    if not (world / "toyworld.json").is_file():
        say(f"Generating a toy world of {n_images} images in {world}")
        generate_toy_world(world, n_images, seed=seed, overwrite=True)
    else:
        say(f"Using the toy world in {world}")

    model_dir = home() / "models" / f"demo-{_model_key(n_images, seed, max_minutes, preset)}"
    reused = (model_dir / MODEL_DONE).is_file()
    train_val = None
    if reused:
        say(f"Reusing the model trained by an earlier demo: {model_dir}")
    else:
        if model_dir.exists():  # an interrupted earlier demo: start that model again
            shutil.rmtree(model_dir)
        what = "tiny model" if preset == "tiny" else "mini model (the tiny ViT against Gemma 3 270M, frozen)"
        say(f"Training the {what} (at most {max_minutes:g} minutes on this machine) into {model_dir}")
        holdout = max(1, min(500, n_images // 5))
        cfg = train_config(
            preset,
            data=str(world),
            out=str(model_dir),
            max_minutes=max_minutes,
            seed=seed,
            device=device,
            val_holdout=float(holdout),
            quiet=True,
        )
        result = train(cfg, progress=train_progress)
        train_val = result.val
        (model_dir / MODEL_DONE).write_text(json.dumps({"val": result.val, "minutes": result.minutes}))

    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.model.student import gate_figures, gate_verdict, read_student_record, student_exists

    distilled = ""
    # An earlier demo's student is reused only if it passed its check (this run may have more time for it).
    wants_student = preset == "tiny"
    if wants_student and (
        not student_exists(model_dir) or not gate_verdict(read_student_record(model_dir))[0]
    ):
        from lexsearch.train.distill import DistillConfig, distill, read_captions

        say(
            f"Distilling a torch-free query encoder from the model ({DISTILL_MINUTES:g} min, up to "
            f"{DISTILL_MAX_MINUTES:g} until it agrees with the LM)"
        )
        cfg = DistillConfig(
            minutes=DISTILL_MINUTES,
            max_minutes=DISTILL_MAX_MINUTES,
            max_steps=distill_steps,
            device=device,
            seed=seed,
        )
        result = distill(model_dir, read_captions(world), cfg)
        distilled = (
            f"{'passed' if result.passed else 'failed'} its quality check after {result.steps} steps "
            f"({result.minutes:.1f} min): {gate_figures(result.figures)}"
        )

    say(f"Indexing {world / 'images'} into the '{DEMO_COLLECTION}' collection")
    encoder = Encoder.load(model_dir, device=device)
    with Collection.open(DEMO_COLLECTION, readonly=False, recreate=True) as col:
        summary = build_index(
            [world / "images"],
            encoder,
            col,
            reporter=index_reporter,
            model_path=str(model_dir),
            rebuild_command="lexsearch demo",
        )
    # Texts through the student if it passed its check, else the LM: as `lexsearch query` chooses.
    queries = LazyEncoder(model_dir, device=device, text_encoder="auto" if wants_student else "lm")
    queries.adopt(encoder)  # the networks are loaded already
    report = DemoReport(
        world=world,
        model=model_dir,
        model_reused=reused,
        train=train_val,
        index_summary=summary.line(),
        text_encoder=queries.text_encoder,
        note=queries.note,
        distilled=distilled,
    )
    with Collection.open(DEMO_COLLECTION, readonly=True) as col:
        for query in DEMO_QUERIES if preset == "tiny" else MINI_QUERIES:
            report.queries.append((query, search(col, queries, query, top=3)))
        first = sorted(col.image_paths(range(1, col.max_image_id + 1)).values())[0]
        row = next(r for r in col.rows() if r.path == first)
        term_cols, weights = col.forward([row.id])[row.id]

    import numpy as np

    from lexsearch.explain import heatmap
    from lexsearch.model.images import open_image

    order = np.argsort(-weights, kind="stable")[:5]
    report.explained = Path(first)
    report.explanation = list(zip(encoder.words(term_cols[order]), weights[order].tolist()))
    labels = read_labels(world)
    key = Path(first).relative_to(world).as_posix()
    if key in labels:
        shapes = labels[key].shapes
        report.truth = ", ".join(f"{s.colour} {s.shape}" for s in shapes)
    report.heatmap = heatmap(
        encoder,
        open_image(first),
        [int(c) for c in term_cols[order][:3]],
        encoder.words(term_cols[order][:3]),
        out_dir / "explain.png",
        weights=weights[order][:3].tolist(),  # the weights printed beside the words
    )
    return report
