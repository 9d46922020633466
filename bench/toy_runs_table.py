"""Markdown table of the final validations of ``lexsearch train`` runs on a toy world (from train_log.jsonl).

    python bench/toy_runs_table.py RUN_DIR [RUN_DIR ...]

One row per run: R@1/5/10 both ways, active dims, explanation precision (colour / shape split) beside the
random-codebook control, the top word outside the caption, PatchDis beside its random baseline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def final_val(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if "val" in r]
    if not vals:
        raise SystemExit(f"{run}: no validation in train_log.jsonl")
    return vals[-1]


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str]) -> int:
    print(
        "| run | step | t2i R@1/5/10 | i2t R@1/5/10 | active img/txt | expl. prec. (colour, shape) | control "
        "| top word outside caption | PatchDis / random |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        last = final_val(Path(arg))
        v, t = last["val"], last["val"].get("toy", {})
        rk = {d: "/".join(f"{v[d][k]:.1f}" for k in ("R@1", "R@5", "R@10")) for d in ("t2i", "i2t")}
        print(
            f"| {Path(arg).name} | {last['step']} | {rk['t2i']} | {rk['i2t']} | "
            f"{v['active_img']:.1f} / {v['active_txt']:.1f} | "
            f"{pct(t['explanation_precision'])} ({pct(t['colour_in_top'])}, {pct(t['shape_in_top'])}) | "
            f"{pct(t['random_codebook_control'])} | {pct(t['top_word_outside_caption'])} | "
            f"{t.get('patchdis_miou', float('nan')):.1f} / {t.get('patchdis_random', float('nan')):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
