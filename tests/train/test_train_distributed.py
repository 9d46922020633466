"""Two CPU processes under torchrun (gloo) give one process's loss and gradients on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_TEXTS

from lexsearch.train import distributed as D
from lexsearch.train.config import train_config
from lexsearch.train.loop import Towers, train_step

GLOBAL_BATCH = 8

# Each rank: its half of a fixed global batch, the DDP-wrapped towers, one step plain and one with
# micro-batches (GradCache across ranks); writes its loss and its (DDP-averaged) gradients.
WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from lexsearch.model import load_checkpoint
    from lexsearch.train import distributed as D
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import Towers, train_step
    sys.path[:0] = sys.argv[3].split(os.pathsep)
    from test_train_distributed import global_batch

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    info = D.init_distributed("cpu")
    model = load_checkpoint(model_dir).train()
    towers = D.wrap_ddp(Towers(model), info)
    pixels, ids, mask = global_batch(model)
    per = pixels.shape[0] // info.world_size
    rows = slice(info.rank * per, (info.rank + 1) * per)
    for micro in (0, 3):
        cfg = train_config("tiny", data="x", out="y", micro_batch_size=micro)
        model.zero_grad(set_to_none=True)
        stats = train_step(towers, pixels[rows], ids[rows], mask[rows], 50, cfg, info, model.vocab_size)
        grads = {n: p.grad.contiguous() for n, p in model.named_parameters() if p.requires_grad}
        grads["__loss__"] = torch.tensor(stats.loss)
        save_file(grads, str(out / f"rank{info.rank}_micro{micro}.safetensors"))
    D.cleanup(info)
    """
)


def global_batch(model):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=g)
    ids, mask = model.tokenize(TINY_TEXTS[::7][:GLOBAL_BATCH])
    return pixels, ids, mask


def test_two_gloo_ranks_match_one_process(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from lexsearch.model import load_checkpoint

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tiny_model_dir),
        str(tmp_path),
        os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]),
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model = load_checkpoint(tiny_model_dir).train()
    cfg = train_config("tiny", data="x", out="y")
    model.zero_grad(set_to_none=True)
    stats = train_step(Towers(model), *global_batch(model), 50, cfg, D.DistInfo(), model.vocab_size)
    single = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for micro in (0, 3):
        for rank in (0, 1):
            got = load_file(str(tmp_path / f"rank{rank}_micro{micro}.safetensors"))
            assert float(got.pop("__loss__")) == pytest.approx(stats.loss, rel=1e-5)
            assert got.keys() == single.keys()
            for name, grad in single.items():
                # The temperature's gradient nearly cancels at initialisation (see test_train_step).
                atol = 5e-6 if name == "log_logit_scale" else 1e-6
                torch.testing.assert_close(
                    got[name], grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
                )


# Dense heads present, dense weight 0: their parameters take no part in the loss. DDP must still train
# (it raises at the second step when a parameter got no gradient in the first).
DENSE_OFF_WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from pathlib import Path
    from lexsearch.model import load_checkpoint
    from lexsearch.train import distributed as D
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import Towers, train_step
    sys.path[:0] = sys.argv[3].split(os.pathsep)
    from test_train_distributed import global_batch

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    info = D.init_distributed("cpu")
    model = load_checkpoint(model_dir).train()
    assert model.dense_img is not None
    towers = D.wrap_ddp(Towers(model), info)
    pixels, ids, mask = global_batch(model)
    per = pixels.shape[0] // info.world_size
    rows = slice(info.rank * per, (info.rank + 1) * per)
    cfg = train_config("tiny", data="x", out="y", dense_weight=0.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        train_step(towers, pixels[rows], ids[rows], mask[rows], step, cfg, info, model.vocab_size)
        opt.step()
    (out / f"ok{info.rank}").write_text("done")
    D.cleanup(info)
    """
)


def test_dense_heads_with_zero_weight_train_under_ddp(tiny_model_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DENSE_OFF_WORKER)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tiny_model_dir),
        str(tmp_path),
        os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]),
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ok0").is_file() and (tmp_path / "ok1").is_file()
