"""A new query in a fresh process: the student query encoder vs the LM text tower, side by side.

    python bench/query_cold.py --model MODEL                # a trained tiny model with a student (distill it)
    python bench/query_cold.py --model MODEL --no-real-size # skip the real-size part (needs ~5 GB, ~1 min)

1. A synthetic collection of ``--images`` images (random sparse vectors over the model's vocabulary and
   random dense vectors, written through the store's write API) bound to MODEL.
2. ``--runs`` rounds, interleaved so load changes hit every path alike; each a fresh ``python -m lexsearch
   query`` timed from the parent (process start to exit), with a query text never asked before:
   - student: ``--text-encoder student``;  lm: ``--text-encoder lm``;
   - cached: the student's query of that round asked again (answered from the query cache); cached-lm: the
     LM's query again (the cached path as it was before the student existed).
3. Real size (the ``small`` preset): a LlamaForCausalLM with TinyLlama-1.1B's config (hidden 2048, 22 layers,
   32 heads / 4 KV, MLP 5632, vocab 32,000; random weights) on the in-context prompt around a query, read
   out on the kept vocabulary, vs the student's encode of the same query at that vocabulary (random weights,
   the distillation's default architecture; tokenised with Mistral-7B's SentencePiece pieces when
   ``mistral-common`` and ``sentencepiece`` are installed).
4. Runtime choice: in fresh processes, the numpy student's load + first encode vs importing onnxruntime
   alone (when installed), which an ONNX student would pay before creating its session.

Prints p50 / min in milliseconds and the ratios the student must meet, with the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread, as `lexsearch query` runs the student (lexsearch/cli.py); set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
QUERY = "a white horse standing on the beach at sunset"  # the real-size prompt's text


def _texts(n: int, seed: int) -> list[str]:
    """``n`` distinct query texts (none asked before in this collection)."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        c1, c2 = rng.choice(COLOURS, 2, replace=False)
        s1, s2 = rng.choice(SHAPES, 2)
        text = f"{c1} {s1} and a {c2} {s2} {rng.integers(1_000_000)}"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_collection(model_dir: str, path: Path, n: int, seed: int) -> None:
    from lexsearch.index import model_meta
    from lexsearch.index.store import Changes, Collection, NewImage
    from lexsearch.model.lazy import LazyEncoder

    enc = LazyEncoder(model_dir, text_encoder="lm")
    rng = np.random.default_rng(seed)
    vocab, dim = enc.vocab_size, int(enc.dense_dim or 0)
    per_image = min(40, vocab)
    with Collection.open(str(path), readonly=False, recreate=True) as col:
        col.bind_model(model_meta(enc, model_dir), "bench")
        for start in range(0, n, 1000):
            batch = []
            for i in range(start, min(n, start + 1000)):
                terms = np.sort(rng.choice(vocab, per_image, replace=False)).astype(np.uint32)
                w = rng.lognormal(0, 0.7, per_image).astype(np.float32)
                dense = None
                if dim:
                    dense = rng.standard_normal(dim).astype(np.float32)
                    dense /= np.linalg.norm(dense)
                batch.append(
                    NewImage(
                        f"/synthetic/img_{i:06d}.png",
                        1000 + i,
                        i,
                        f"{i:032x}",
                        64,
                        64,
                        None,
                        terms,
                        w / np.linalg.norm(w),
                        dense,
                    )
                )
            col.apply(Changes(insert=batch))
        col.save_dense()


def fresh_query(col: Path, text: str, encoder: str) -> float:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "lexsearch",
        "query",
        text,
        "--collection",
        str(col),
        "--json",
        "--text-encoder",
        encoder,
        "--device",
        "cpu",
    ]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"query failed: {out.stderr.strip()}")
    return dt


def fresh_python(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


def stats(xs: list[float]) -> tuple[float, float]:
    a = np.array(xs) * 1e3
    return float(np.percentile(a, 50)), float(a.min())


def line(name: str, xs: list[float]) -> float:
    p50, mn = stats(xs)
    print(f"  {name:<44} p50 {p50:8.1f} ms   min {mn:8.1f} ms   (n={len(xs)})")
    return p50


# --------------------------------------------------------------------------------------------- real size
def real_tokenizer():
    """Mistral-7B v0.1's SentencePiece pieces (Llama-2 family) as a ``tokenizers`` BPE, or None."""
    try:
        import mistral_common
        from tokenizers import Tokenizer, normalizers
        from tokenizers.models import BPE
        from transformers.convert_slow_tokenizer import SentencePieceExtractor
    except ImportError:
        return None
    spm = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    extracted = SentencePieceExtractor(str(spm)).extract(BPE)
    tok = Tokenizer(
        BPE(extracted["vocab"], extracted["merges"], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    return tok


def time_lm(lm, z_txt, ids, runs: int) -> list[float]:
    """Seconds per LM text read-out: the decoder over the prompt, the last hidden state on the vocabulary."""
    import torch

    @torch.inference_mode()
    def encode():
        h = lm.model(input_ids=ids).last_hidden_state[:, -1]  # (1, H)
        return torch.nn.functional.normalize(torch.nn.functional.elu(h @ z_txt.T) + 1, dim=-1)

    encode()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        encode()
        times.append(time.perf_counter() - t)
    return times


def real_size(runs: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lexsearch.model.config import PAPER_PROMPT
    from lexsearch.model.student import StudentConfig, StudentEncoder
    from lexsearch.model.vocab import filter_vocabulary
    from lexsearch.train.distill import DistillConfig

    tok = real_tokenizer()
    if tok is None:
        print("  (mistral-common / sentencepiece not installed: real-size part skipped)")
        return

    class Pieces:  # the slice of a transformers tokenizer filter_vocabulary reads
        all_special_ids = [0, 1, 2]

        def __len__(self):
            return tok.get_vocab_size()

        def convert_ids_to_tokens(self, ids):
            return [tok.id_to_token(i) for i in ids]

    kept = filter_vocabulary(Pieces())
    v = len(kept)
    prompt = PAPER_PROMPT.replace("[TEXT]", QUERY) + '"'
    ids = torch.tensor([[1] + tok.encode(prompt, add_special_tokens=False).ids])
    cfg = LlamaConfig(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        vocab_size=32000,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
    )
    t = time.perf_counter()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    build_s = time.perf_counter() - t
    z_txt = lm.get_output_embeddings().weight.detach()[torch.tensor(kept)]  # (V, H)

    lm_times = time_lm(lm, z_txt, ids, runs)
    del lm, z_txt

    d = DistillConfig()
    arch = StudentConfig(
        n_tokens=32000,
        vocab_size=v,
        width=d.width,
        layers=d.layers,
        heads=d.heads,
        max_tokens=64,
        dense_dim=256,
    )
    rng = np.random.default_rng(0)
    inner = int(arch.width * arch.mlp_ratio)
    shapes = {
        "tok_emb": (32000, arch.width),
        "pos_emb": (65, arch.width),
        "cls": (arch.width,),
        "ln_f.weight": (arch.width,),
        "ln_f.bias": (arch.width,),
        "out.weight": (v, arch.width),
        "out.bias": (v,),
        "dense.weight": (256, arch.width),
        "dense.bias": (256,),
    }
    for i in range(arch.layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "ln1.weight": (arch.width,),
                p + "ln1.bias": (arch.width,),
                p + "qkv.weight": (3 * arch.width, arch.width),
                p + "qkv.bias": (3 * arch.width,),
                p + "proj.weight": (arch.width, arch.width),
                p + "proj.bias": (arch.width,),
                p + "ln2.weight": (arch.width,),
                p + "ln2.bias": (arch.width,),
                p + "fc1.weight": (inner, arch.width),
                p + "fc1.bias": (inner,),
                p + "fc2.weight": (arch.width, inner),
                p + "fc2.bias": (arch.width,),
            }
        )
    weights = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
    student = StudentEncoder(arch, weights, tok, {"id": "bench"})
    student.encode_texts([QUERY])  # warm-up
    st_times = []
    for _ in range(runs * 10):
        t = time.perf_counter()
        student.encode_texts([QUERY])
        st_times.append(time.perf_counter() - t)
    print(
        f"\nReal size (small preset): V = {v:,} kept pieces of 32,000; prompt {ids.shape[1]} tokens; "
        f"query {len(tok.encode(QUERY, add_special_tokens=False).ids)} pieces; LM built in {build_s:.0f} s"
    )
    lm_p50 = line("LM forward + read-out (TinyLlama-1.1B size)", lm_times)
    st_p50 = line(f"student encode (numpy, d={arch.width}, {arch.layers} layers)", st_times)
    print(f"  -> student is {lm_p50 / st_p50:,.0f}x faster (must be >= 100x)")
    n_params = sum(w.size for w in weights.values())
    print(f"  student weights: {n_params / 1e6:.1f}M float32 = {n_params * 4 / 2**20:.0f} MiB")


def runtime_choice(model_dir: str, runs: int) -> None:
    """In fresh processes: the numpy student's load + first encode vs importing onnxruntime alone (which an
    ONNX student would pay before it even creates its session); the rest (Python, numpy, the tokenizer, the
    model's config and vocabulary) both would share."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("\nRuntime choice: onnxruntime not installed (pip install onnxruntime to compare)")
        return
    code = (
        "import time\n"
        "from lexsearch.model.lazy import LazyEncoder\n"
        f"enc = LazyEncoder({model_dir!r}, text_encoder='student')\n"
        "import scipy.sparse\n"  # the return type, whichever runtime computes the vector
        "t0 = time.perf_counter(); enc.student; t1 = time.perf_counter()\n"
        "enc.encode_texts(['a red circle']); t2 = time.perf_counter()\n"
        "import onnxruntime; t3 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2)\n"
    )
    load, encode, ort = [], [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        a, b, c = (float(x) for x in out.stdout.split())
        load.append(a)
        encode.append(b)
        ort.append(c)
    print("\nRuntime choice (fresh processes, after the shared imports):")
    lo = line("numpy student: load the weights", load)
    en = line("numpy student: first encode", encode)
    on = line("import onnxruntime (no session yet)", ort)
    print(f"  -> numpy student load + encode {lo + en:.1f} ms vs onnxruntime's import alone {on:.1f} ms")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", required=True, help="A trained model folder with a student (lexsearch distill)."
    )
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-real-size", action="store_true")
    args = ap.parse_args(argv)

    from lexsearch.model.student import student_exists

    if not student_exists(args.model):
        raise SystemExit(
            f"{args.model} has no student: lexsearch distill --model {args.model} --data CAPTIONS"
        )
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="query-cold-") as tmp:
        col = Path(tmp) / "col"
        t = time.perf_counter()
        build_collection(args.model, col, args.images, args.seed)
        print(f"synthetic collection: {args.images:,} images, built in {time.perf_counter() - t:.1f} s")
        texts = _texts(2 * args.runs + 2, args.seed)
        fresh_query(col, texts[-1], "student")  # warm the page cache (python, the packages, the store)
        fresh_query(col, texts[-2], "lm")
        res: dict[str, list[float]] = {"student": [], "lm": [], "cached": [], "cached-lm": []}
        for i in range(args.runs):
            s_text, l_text = texts[2 * i], texts[2 * i + 1]
            res["student"].append(fresh_query(col, s_text, "student"))
            res["lm"].append(fresh_query(col, l_text, "lm"))
            res["cached"].append(fresh_query(col, s_text, "student"))
            res["cached-lm"].append(fresh_query(col, l_text, "lm"))
        print(f"\nA query in a fresh process ({args.images:,} images, tiny model):")
        st = line("new query, student", res["student"])
        lm = line("new query, LM", res["lm"])
        ca = line("repeated (cached) query, student key", res["cached"])
        cl = line("repeated (cached) query, LM key", res["cached-lm"])
        print(
            f"  -> student / cached = {st / ca:.2f} (LM key: {st / cl:.2f}), must be <= 1.5; "
            f"student / LM = {st / lm:.3f}, must be <= 0.2"
        )
    runtime_choice(args.model, args.runs)
    if not args.no_real_size:
        real_size(max(3, args.runs // 2))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
