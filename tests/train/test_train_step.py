"""The training step: GradCache micro-batches, gradient checkpointing and the optimiser are exact."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXTS

from lexsearch.train import distributed as D
from lexsearch.train.config import train_config
from lexsearch.train.loop import Towers, build_optimizer, compute_loss, train_step

BATCH = 8


def _model(model_dir, lora_dropout: float | None = None):
    from lexsearch.model import load_checkpoint

    if lora_dropout is not None:  # a dropout the GradCache re-forward must replay exactly
        path = model_dir / "config.json"
        payload = json.loads(path.read_text())
        payload["model"]["lora_dropout"] = lora_dropout
        path.write_text(json.dumps(payload))
    return load_checkpoint(model_dir).train()


def _batch(model):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(BATCH, 3, 64, 64, generator=g)
    ids, mask = model.tokenize(TINY_TEXTS[:: len(TINY_TEXTS) // BATCH][:BATCH])
    return pixels, ids, mask


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _run(model, micro: int, step: int = 50, seed: int = 0, **overrides):
    cfg = train_config("tiny", data="x", out="y", micro_batch_size=micro, **overrides)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    stats = train_step(Towers(model), *_batch(model), step, cfg, D.DistInfo(), model.vocab_size)
    return stats, _grads(model)


def _assert_same(a: dict, b: dict, scale_atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name, value in a.items():
        atol = scale_atol if name == "log_logit_scale" else 1e-6
        torch.testing.assert_close(value, b[name], rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("reg", ["overuse", "flops"])
def test_micro_batched_step_has_the_big_batch_gradients(tiny_model_dir, reg):
    model = _model(tiny_model_dir)
    big_stats, big = _run(model, micro=0, reg=reg)
    small_stats, small = _run(model, micro=3, reg=reg)  # uneven micro-batches: 3 + 3 + 2
    assert small_stats.loss == pytest.approx(big_stats.loss, rel=1e-5)
    assert big_stats.lambda_img > 0 and big_stats.dense > 0  # the regulariser and the dense term take part
    _assert_same(big, small)
    # Every trainable tensor gets a gradient, the temperature and the dense heads included.
    assert set(big) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_micro_batches_replay_dropout_exactly(tiny_model_dir):
    model = _model(tiny_model_dir, lora_dropout=0.3)
    _, cached = _run(model, micro=3, seed=7)
    # Reference: the same micro-batches, in the same RNG order, each forward kept with its graph.
    cfg = train_config("tiny", data="x", out="y")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    pixels, ids, mask = _batch(model)
    outs = [Towers(model)(pixels[s], ids[s], mask[s]) for s in (slice(0, 3), slice(3, 6), slice(6, 8))]
    feats = [torch.cat([o[k] for o in outs]) for k in range(4)]
    loss, _ = compute_loss(feats, outs[0][4], 50, cfg, model.vocab_size)
    loss.backward()
    _assert_same(_grads(model), cached)
    # And dropout is really on: another seed gives other gradients.
    _, other = _run(model, micro=3, seed=8)
    assert any(not torch.allclose(cached[n], other[n]) for n in cached)


def test_gradient_checkpointing_keeps_the_prefix_cache_result(tiny_model_dir):
    model = _model(tiny_model_dir)
    _, plain = _run(model, micro=0)
    ids, mask = _batch(model)[1:]
    shared = model.encode_text(ids, mask, share_prefix=True)[0].detach()
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # With checkpointing transformers drops layer caches; the shared-prefix path must still be exact.
    torch.testing.assert_close(model.encode_text(ids, mask, share_prefix=True)[0].detach(), shared)
    # The full prompt and the shared prefix differ only by float32 round-off (~1e-8 in the features); at
    # initialisation the temperature's gradient (~2e-5) is a near-cancelling sum of O(1) terms and shows it
    # at ~1e-6 (the same happens with share_prefix=False and no checkpointing at all).
    _, ckpt = _run(model, micro=0)
    _assert_same(plain, ckpt, scale_atol=5e-6)
    _, ckpt_micro = _run(model, micro=3)
    _assert_same(plain, ckpt_micro, scale_atol=5e-6)


def test_optimizer_holds_exactly_the_trainable_parameters(tiny_model_dir):
    model = _model(tiny_model_dir)
    cfg = train_config("tiny", data="x", out="y", lr=1e-3, temperature_lr=1e-2, weight_decay=0.1)
    optimizer, scheduler = build_optimizer(model, cfg, total_steps=10)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    temp = [g for g in optimizer.param_groups if any(p is model.log_logit_scale for p in g["params"])]
    assert len(temp) == 1 and temp[0]["lr"] == 1e-2 and temp[0]["weight_decay"] == 0.0
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _run(model, micro=0)
    optimizer.step()
    scheduler.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    # Cosine decay reaches min_lr_ratio (0) at the last step.
    for _ in range(9):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_lambdas_ramp_and_scale_with_the_vocabulary():
    from lexsearch.train.config import PAPER_VOCAB_SIZE

    torch.manual_seed(0)
    s = torch.nn.functional.normalize(torch.rand(6, 100), dim=-1)
    feats = [s, s, None, None]
    paper = train_config("paper", data="x", out="y")
    _, st0 = compute_loss(feats, torch.tensor(10.0), 0, paper, 100)
    _, st1 = compute_loss(feats, torch.tensor(10.0), 1000, paper, 100)
    _, st2 = compute_loss(feats, torch.tensor(10.0), 5000, paper, 100)
    assert st0.lambda_img == 0 and st1.lambda_img == pytest.approx(5e-4 / 4) and st2.lambda_img == 5e-4
    scaled = train_config("paper", data="x", out="y", scale_lambdas_by_vocab=True)
    _, st3 = compute_loss(feats, torch.tensor(10.0), 5000, scaled, 100)
    assert st3.lambda_txt == pytest.approx(1e-3 * PAPER_VOCAB_SIZE / 100)


def test_train_config_round_trips_through_json(tmp_path):
    from lexsearch.train.config import TrainConfig

    cfg = train_config("paper", data="d", out="o", temperature_lr=1e-3, reg="flops", epochs=2.5)
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg
    assert cfg.lr == 5e-4 and cfg.lambda_img == 5e-4 and cfg.lambda_txt == 1e-3 and cfg.ramp_steps == 2000
    assert not cfg.scale_lambdas_by_vocab and cfg.batch_size == 6144


def test_checkpointing_dropout_and_micro_batches_replay_exactly(tiny_model_dir):
    """The real configuration at once: the no-grad pass and the re-forward take one prompt path, so the
    cached features are the re-forward's and the gradients are those of the micro-batches' own graphs."""
    model = _model(tiny_model_dir, lora_dropout=0.3)
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, cached = _run(model, micro=3, seed=7)
    cfg = train_config("tiny", data="x", out="y")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    pixels, ids, mask = _batch(model)
    outs = [Towers(model)(pixels[s], ids[s], mask[s]) for s in (slice(0, 3), slice(3, 6), slice(6, 8))]
    feats = [torch.cat([o[k] for o in outs]) for k in range(4)]
    loss, _ = compute_loss(feats, outs[0][4], 50, cfg, model.vocab_size)
    loss.backward()
    _assert_same(_grads(model), cached)


def _dense_only_grads(model) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    pixels, ids, mask = _batch(model)
    _, _, d_img, d_txt, _ = Towers(model)(pixels, ids, mask)
    (d_img @ d_txt.T).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_dense_heads_do_not_train_the_lexical_model_by_default(tiny_model_dir):
    model = _model(tiny_model_dir)
    assert not model.config.dense_backprop
    touched = _dense_only_grads(model)
    assert touched and all(n.startswith(("dense_img", "dense_txt")) for n in touched)
    model.config.dense_backprop = True  # the opt-in: the dense InfoNCE shapes the adapter and LoRA too
    touched = _dense_only_grads(model)
    assert any(n.startswith("adapter") for n in touched) and any("lora_" in n for n in touched)
