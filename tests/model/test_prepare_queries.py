"""A server's warm-up computes once what every query shares (``LexVLA.prepare_queries``): the prompt
prefix's key/value cache and the calibration's empty text. In float32 the vectors are the same as without it
(under Gemma's sliding-window and global attention); in bfloat16 they stay close; training drops both."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.model.test_gemma import _gemma_checkpoint

TEXTS = ["a red circle", "a small green triangle at the top", "blue", "Purple star on a striped background"]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return _gemma_checkpoint(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture
def gemma(gemma_dir):
    from lexsearch.model.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = load_checkpoint(gemma_dir).eval()
    model.config.text_calibration = 0.5
    return model


def _encode(model, texts):
    ids, mask = model.tokenize(texts)
    with torch.no_grad():
        return model.encode_text(ids, mask)


def _decoder_calls(model, monkeypatch) -> list[int]:
    calls = []
    real = model.decoder.forward

    def counted(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", counted)
    return calls


def test_prepared_queries_give_the_same_vectors_without_rerunning_the_prefix(gemma, monkeypatch):
    want_s, want_d = _encode(gemma, TEXTS)
    gemma.prepare_queries()
    calls = _decoder_calls(gemma, monkeypatch)
    for i, text in enumerate(TEXTS):  # one at a time, as a server encodes them, and twice (no state kept)
        for _ in range(2):
            s, _ = _encode(gemma, [text])
            assert (s[0] - want_s[i]).abs().max().item() < 1e-5
    s, d = _encode(gemma, TEXTS)  # a batch shares the cached prefix too
    assert (s - want_s).abs().max().item() < 1e-5
    assert want_d is None or (d - want_d).abs().max().item() < 1e-5
    # One LM pass per call, over the text's own tokens: neither the prefix nor the empty text is rerun.
    assert len(calls) == 2 * len(TEXTS) + 1
    assert max(calls) < gemma.prefix_ids.numel()


def test_bf16_queries_stay_close_to_fp32(gemma):
    want, _ = _encode(gemma, TEXTS)
    gemma.prepare_queries(torch.bfloat16)
    assert next(gemma.decoder.parameters()).dtype == torch.bfloat16
    got, _ = _encode(gemma, TEXTS)
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, want).min().item() > 0.99
    for a, b in zip(got, want):
        assert len(set(a.topk(10).indices.tolist()) & set(b.topk(10).indices.tolist())) >= 8


def test_training_drops_what_prepare_computed(gemma):
    gemma.prepare_queries()
    assert gemma._query_prefix is not None and gemma._query_h0 is not None
    gemma.train()
    assert gemma._query_prefix is None and gemma._query_h0 is None


def test_query_dtype_auto_keeps_small_lms_in_fp32(gemma):
    from lexsearch.errors import UsageError
    from lexsearch.serve.service import query_dtype

    cpu = torch.device("cpu")
    assert query_dtype(gemma, cpu, "auto") is None  # a tiny LM: nothing to gain
    assert query_dtype(gemma, cpu, "fp32") is None
    assert query_dtype(gemma, cpu, "bf16") == torch.bfloat16
    with pytest.raises(UsageError):
        query_dtype(gemma, cpu, "int4")


def test_bf16_vectors_are_cached_apart_from_fp32_ones(gemma_dir):
    from lexsearch.model.lazy import LazyEncoder

    enc = LazyEncoder(gemma_dir, device="cpu", text_encoder="lm")
    enc.encode_texts(["warm up"])
    assert enc.query_key("a red circle") == "a red circle"
    enc.model.prepare_queries()  # float32: the same vectors, the same key
    assert enc.query_key("a red circle") == "a red circle"
    enc.model.prepare_queries(torch.bfloat16)
    assert enc.query_key("a red circle") not in (
        "a red circle",
        LazyEncoder(gemma_dir).query_key("a red circle"),
    )
