"""The ``small`` and ``paper`` presets at their true sizes, with random weights (speed and memory do not
depend on weight values), built offline from the shipped architecture configs.

    python bench/real_size.py --preset paper --tokenizer tokenizer.model --params-only --json
    python bench/real_size.py --preset small --tokenizer tokenizer.model            # ~4.5 GB fp32, minutes
    python bench/real_size.py --preset paper --tokenizer tokenizer.model --layers 2 --out /tmp/paper2

``--tokenizer`` is a Llama-2-family SentencePiece ``.model`` file (Llama 2's own, or Mistral-7B v0.1's from
the ``mistral-common`` wheel: ``mistral_common/data/tokenizer.model.v1``). Printed:

- ``V`` and parameters by part, from a meta-device build (no memory): adapter, image codebook, LoRA, LM, vision,
  trainable;
- unless ``--params-only``, random weights at the true size (or ``--layers N`` layers per tower), each stage in
  its own process so its peak RSS is its own: build time and peak RSS; for ``small`` one training step of 8
  pairs at micro-batch 4 (the GradCache path, gradient checkpointing on, as the preset trains); image encode
  throughput at 224 px; a text query encode in a fresh process (import, checkpoint load, first forward) and
  the warm forward (fp32; bf16 autocast too where the CPU has bf16 kernels). On CUDA the stages run there in
  bf16 (steps/s and memory for ``small``, query encode time for both).

``--out DIR`` keeps the random-weight checkpoint it writes (a loadable lexsearch model: ``lexsearch index`` /
``query`` / ``explain`` run on it); without it a temporary one is written for the query stage and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

QUERY = "a white horse running on the beach"
CAPTIONS = [
    "a man riding a white horse on the beach",
    "two dogs playing in the snow",
    "a red car parked next to a tree",
    "a plate of pasta with tomatoes",
    "children flying a kite in a park",
    "a cat sleeping on a sofa",
    "a city street at night with lights",
    "a small boat on a calm lake",
]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def params_stage(args) -> dict:
    from lexsearch.model.architectures import load_sentencepiece_tokenizer, meta_model, parameter_counts
    from lexsearch.model.presets import preset_config

    tok = load_sentencepiece_tokenizer(args.tokenizer)
    model = meta_model(preset_config(args.preset), tok, args.layers)
    counts = parameter_counts(model)
    keep = ("adapter", "image_codebook", "lora", "lm", "vision", "trainable")
    return {
        "V": model.vocab_size,
        "params": {k: counts[k] for k in keep},
        "lora_share_of_lm": counts["lora"] / counts["lm"],
    }


def build_stage(args) -> dict:
    """Random bases at the preset's size, the LexVLA around them, a training step (small), image throughput;
    writes the checkpoint the query stage loads."""
    import torch

    from lexsearch.model.architectures import load_sentencepiece_tokenizer, preset_bases
    from lexsearch.model.checkpoint import quiet_transformers, save_checkpoint
    from lexsearch.model.lexvla import LexVLA
    from lexsearch.model.presets import preset_config
    from lexsearch.model.vocab import filter_vocabulary

    quiet_transformers()
    device = _device()
    out = Path(args.ckpt)
    tok = load_sentencepiece_tokenizer(args.tokenizer)
    hub = preset_config(args.preset)
    config = replace(hub, vocab_ids=filter_vocabulary(tok, hub.vocab_filter))
    t0 = time.perf_counter()
    vision, lm = preset_bases(hub, tok, args.layers)
    bases_s = time.perf_counter() - t0
    # The bases go to disk before LoRA is injected into the LM (the query stage loads them like hub models).
    t1 = time.perf_counter()
    vision.save_pretrained(out / "base" / "vision")
    lm.save_pretrained(out / "base" / "lm")
    tok.save_pretrained(out / "base" / "lm")
    save_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    config = replace(config, vision_model="base/vision", lm_model="base/lm")
    model = LexVLA(config, vision, lm, tok)
    wrap_s = time.perf_counter() - t2
    save_checkpoint(model, out, root=out)
    result = {
        "device": str(device),
        "layers": args.layers,
        "build_s": bases_s + wrap_s,
        "build_peak_rss_gb": _peak_rss_gb(),
        "write_bases_s": save_s,
    }
    if device.type == "cuda":
        vision.to(torch.bfloat16)
        lm.to(torch.bfloat16)
    model.to(device)

    if args.preset == "small":
        result.update(_train_step(model, device))
    model.eval()
    result.update(_image_throughput(model, device))
    if device.type == "cuda":
        result["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


def _train_step(model, device) -> dict:
    import torch

    from lexsearch.train import distributed as D
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import Towers, train_step

    cfg = train_config("small", data="x", out="y", batch_size=len(CAPTIONS), micro_batch_size=4)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pixels = torch.randn(len(CAPTIONS), 3, 224, 224, device=device)
    ids, mask = model.tokenize(CAPTIONS)
    info = D.DistInfo(device=device)
    times = []
    for step in range(2 if device.type == "cuda" else 1):  # on CUDA the first step includes warm-up
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        train_step(Towers(model), pixels, ids.to(device), mask.to(device), step, cfg, info, model.vocab_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    model.lm.gradient_checkpointing_disable()
    return {
        "train_step_s": times[-1],
        "train_steps_per_s": 1.0 / times[-1],
        "train_pairs": len(CAPTIONS),
        "train_micro_batch": 4,
        "train_peak_rss_gb": _peak_rss_gb(),
    }


def _image_throughput(model, device, batch: int = 8, reps: int = 2) -> dict:
    import torch

    from lexsearch.model.encoder import autocast

    pixels = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode(), autocast(device):
        model.encode_image(pixels[:2])  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            model.encode_image(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return {"image_batch": batch, "images_per_s_224px": batch * reps / dt}


def query_stage(args, started: float) -> dict:
    """A fresh process: imports, checkpoint load, the first forward of one query, then warm forwards."""
    t0 = time.perf_counter()
    import torch

    from lexsearch.model.encoder import Encoder

    import_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    enc = Encoder.load(args.ckpt, device="auto")
    load_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    enc.encode_texts([QUERY])
    first_s = time.perf_counter() - t2
    warm = []
    for _ in range(3):
        t3 = time.perf_counter()
        enc.encode_texts([QUERY])
        warm.append(time.perf_counter() - t3)
    result = {
        "query_import_s": import_s,
        "query_load_s": load_s,
        "query_first_forward_s": first_s,
        "query_cold_total_s": time.perf_counter() - started,  # from interpreter start
        "query_warm_forward_s": sorted(warm)[1],
        "query_peak_rss_gb": _peak_rss_gb(),
    }
    if enc.device.type == "cpu" and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            ids, mask = enc.model.tokenize([QUERY])
            times = []
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                for _ in range(4):
                    t4 = time.perf_counter()
                    enc.model.encode_text(ids, mask)
                    times.append(time.perf_counter() - t4)
            result["query_warm_forward_bf16_autocast_s"] = sorted(times[1:])[1]
    return result


def _run_stage(stage: str, args, ckpt: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_stage",
        stage,
        "--preset",
        args.preset,
        "--tokenizer",
        args.tokenizer,
    ]
    cmd += ["--_ckpt", str(ckpt)] + (["--layers", str(args.layers)] if args.layers else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("small", "paper"), required=True)
    ap.add_argument("--tokenizer", required=True, help="a Llama-2-family SentencePiece .model file")
    ap.add_argument("--layers", type=int, default=None, help="layers per tower (default: the true depth)")
    ap.add_argument("--params-only", action="store_true", help="only the meta-device parameter counts")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    ap.add_argument("--out", help="keep the random-weight checkpoint here (a loadable lexsearch model)")
    ap.add_argument("--_stage", help=argparse.SUPPRESS)
    ap.add_argument("--_ckpt", dest="ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args._stage:  # a child process: one stage, one JSON line
        stage = {"params": params_stage, "build": build_stage}.get(args._stage)
        result = stage(args) if stage else query_stage(args, started)
        print(json.dumps(result))
        return

    if not Path(args.tokenizer).is_file():
        sys.exit(f"tokenizer file not found: {args.tokenizer}")
    result = {"preset": args.preset, "layers": args.layers, **_run_stage("params", args, Path("."))}
    if not args.params_only:
        ckpt = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lexsearch-real-size-"))
        if args.out and ckpt.exists() and any(ckpt.iterdir()):
            sys.exit(f"{ckpt} is not empty")
        try:
            result.update(_run_stage("build", args, ckpt))
            result.update(_run_stage("query", args, ckpt))
        finally:
            if not args.out:
                shutil.rmtree(ckpt, ignore_errors=True)
        if args.out:
            result["checkpoint"] = str(ckpt)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            for k, v in value.items():
                print(f"{key}.{k}: {v:,}")
        elif isinstance(value, float):
            print(f"{key}: {value:.3f}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
