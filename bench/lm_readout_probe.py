"""Does the pretrained tiny LM's read-out name a caption's words? Pretrain it with PretrainConfig overrides and
count held-out captions whose important words are exactly the read-out's top-|words| tokens, and those whose
first-named word is read out above their last-named one (the salience of order of mention), with the mean
logit gap between the two.

    python bench/lm_readout_probe.py '{"lm_readout_weight": 100.0}' [--train DIR --val DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="?", default="{}", help="PretrainConfig overrides (JSON)")
    ap.add_argument("--train", default="/tmp/toy/train")
    ap.add_argument("--val", default="/tmp/toy/val")
    ap.add_argument("--n-val", type=int, default=300)
    args = ap.parse_args()

    import numpy as np
    import torch

    from lexsearch.data.pairs import load_folder
    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.builder import build_tokenizer, random_tiny_bases
    from lexsearch.tiny.config import PretrainConfig
    from lexsearch.tiny.lm import PromptFormat, important_words, pretrain_lm, prompt_stop_words

    over = json.loads(args.overrides)
    model_config = preset_config("tiny")
    captions = list(load_folder(args.train).captions)
    held_out = list(load_folder(args.val).captions)[: args.n_val]
    tokenizer = build_tokenizer(captions)
    cfg = replace(PretrainConfig(), **over)
    _vision, lm = random_tiny_bases(tokenizer, model_config.vision_config, model_config.lm_config, cfg.seed)
    torch.manual_seed(cfg.seed + 1)  # as pretrain_tiny_bases does
    t0 = time.time()
    report = pretrain_lm(lm, tokenizer, captions, model_config, cfg)
    seconds = time.time() - t0
    fmt = PromptFormat(tokenizer, model_config)
    hits, first_above, gaps = [], [], []
    with torch.no_grad():
        for caption in held_out:
            last = lm(input_ids=torch.tensor([fmt.query_ids(caption)])).logits[0, -1]
            words = important_words(caption, prompt_stop_words(model_config, cfg.stop_words))
            ids = [fmt.word_ids(w)[0] for w in words]
            hits.append(set(last.topk(len(set(ids))).indices.tolist()) == set(ids))
            if len(words) > 1:
                gap = float(last[ids[0]] - last[ids[-1]])
                first_above.append(gap > 0)
                gaps.append(gap)
    print(
        over,
        report,
        f"caption words = top-|words| of the read-out: {100 * np.mean(hits):.1f}%;",
        f"first-named word above the last-named: {100 * np.mean(first_above):.1f}%",
        f"(mean logit gap {np.mean(gaps):+.2f})",
        f"({seconds:.0f} s)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
