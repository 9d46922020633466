"""The student query encoder: its numpy runtime equals the torch network it was trained as, it is chosen
for queries when the model has one, and the query path through it never imports torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_TEXTS
from fakes import make_images

from lexsearch.cli import cli


@pytest.fixture(scope="session")
def _distilled_master(_tiny_model_master, tmp_path_factory):
    import shutil

    from lexsearch.train.distill import DistillConfig, distill

    dest = tmp_path_factory.mktemp("distilled") / "model"
    shutil.copytree(_tiny_model_master, dest)
    distill(dest, TINY_TEXTS, DistillConfig(minutes=0.3, max_epochs=30, variants=1, device="cpu", width=64))
    return dest


@pytest.fixture
def distilled_dir(_distilled_master, tmp_path):
    import shutil

    dest = tmp_path / "distilled"
    shutil.copytree(_distilled_master, dest)
    return dest


def _index(model_dir, tmp_path) -> str:
    make_images(tmp_path / "photos", 6)
    col = str(tmp_path / "col")
    args = [
        "index",
        str(tmp_path / "photos"),
        "--model",
        str(model_dir),
        "--collection",
        col,
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return col


def test_numpy_runtime_equals_the_torch_student():
    """What the runtime computes is what distillation trained: same pieces, same vectors."""
    import torch

    from lexsearch.model.student import StudentConfig, StudentEncoder
    from lexsearch.train.distill import StudentNet, _pad

    class Backend:  # ids straight from the text: one piece per character
        def encode_batch(self, texts, add_special_tokens=False):
            return [type("E", (), {"ids": [ord(c) % 50 for c in t]})() for t in texts]

    torch.manual_seed(0)
    arch = StudentConfig(n_tokens=50, vocab_size=40, width=32, layers=2, heads=4, max_tokens=12, dense_dim=8)
    net = StudentNet(arch, lm_width=24).eval()
    for p in net.parameters():  # away from the initialisation, where LayerNorm weights are all 1
        p.data += 0.1 * torch.randn_like(p)
    z_txt, head = torch.randn(40, 24), torch.nn.Linear(24, 8)
    student = StudentEncoder(arch, net.export(z_txt, head), Backend(), {"id": "x"})

    texts = ["a red circle", "b", "a much longer text that is cut at twelve pieces"]
    s, dense = student.raw(texts)
    ids, mask = _pad([[ord(c) % 50 for c in t][:12] for t in texts], torch.device("cpu"))
    with torch.no_grad():
        h = net(ids, mask)
        want_s = torch.nn.functional.normalize(torch.nn.functional.elu(h @ z_txt.T) + 1, dim=-1).numpy()
        want_d = torch.nn.functional.normalize(head(h), dim=-1).numpy()
    assert s.shape == (3, 40) and dense.shape == (3, 8)
    np.testing.assert_allclose(s, want_s, atol=2e-5)
    np.testing.assert_allclose(dense, want_d, atol=2e-5)
    assert (s > 0).all() and np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)


def test_distill_writes_a_student_that_queries_use_by_default(distilled_dir):
    from safetensors.numpy import load_file

    from lexsearch.model import Encoder
    from lexsearch.model.lazy import LazyEncoder

    record = json.loads((distilled_dir / "student.json").read_text())
    assert record["teacher_model_id"] and record["distill"]["steps"] > 0
    assert set(load_file(str(distilled_dir / "student.safetensors"))) >= {"tok_emb", "out.weight", "out.bias"}

    enc = LazyEncoder(distilled_dir, device="cpu")
    assert enc.text_encoder == "student"
    assert LazyEncoder(distilled_dir, device="cpu", text_encoder="lm").text_encoder == "lm"
    out = enc.encode_texts(["a small red circle at the top", "a large blue star"])
    assert not enc.loaded  # the student needs neither torch nor the model's networks
    assert out.sparse.shape == (2, enc.vocab_size) and out.sparse.min() >= 0
    assert out.dense.shape == (2, enc.dense_dim)
    # The same sparsification as the model: nothing at or below 1/sqrt(V) is kept.
    assert out.sparse.data.min() > 1 / np.sqrt(enc.vocab_size)

    # Distilled, not random: much closer to the LM than the same network before training.
    import torch

    from lexsearch.model.student import StudentEncoder
    from lexsearch.train.distill import StudentNet

    texts = ["a small red circle at the top", "a large blue star", "green triangle", "Purple Square"]
    lm = Encoder.load(distilled_dir, device="cpu")
    want = lm.encode_texts(texts, sparsify="none").sparse.toarray()
    torch.manual_seed(1)
    fresh = StudentNet(enc.student.arch, lm.model.z_txt.shape[1])
    untrained = StudentEncoder(
        enc.student.arch, fresh.export(lm.model.z_txt, lm.model.dense_txt), enc.vocab.backend, {}
    )
    err = ((enc.student.raw(texts)[0] - want) ** 2).sum(1).mean()
    err_untrained = ((untrained.raw(texts)[0] - want) ** 2).sum(1).mean()
    assert err < 0.3 * err_untrained, (err, err_untrained)


def test_a_stale_or_missing_student_is_never_used_silently(distilled_dir, tiny_model_dir):
    from lexsearch.errors import ModelError
    from lexsearch.model.lazy import LazyEncoder

    with pytest.raises(ModelError, match="lexsearch distill"):
        LazyEncoder(tiny_model_dir, text_encoder="student")
    plain = LazyEncoder(tiny_model_dir)
    assert plain.text_encoder == "lm" and plain.note == ""  # no student: nothing to explain
    record = json.loads((distilled_dir / "student.json").read_text())
    record["teacher_model_id"] = "0" * 16  # distilled from other weights
    (distilled_dir / "student.json").write_text(json.dumps(record))
    stale = LazyEncoder(distilled_dir)
    assert stale.text_encoder == "lm" and "stale" in stale.note and "lexsearch distill" in stale.note
    with pytest.raises(ModelError, match="earlier version"):
        LazyEncoder(distilled_dir, text_encoder="student")


def test_only_a_student_that_passed_its_check_is_used_by_auto(distilled_dir):
    """auto reads the verdict the distillation recorded; a student without one (distilled before the check
    existed) or with a failed one is not used, and the note says why in one line."""
    from lexsearch.model.lazy import LazyEncoder

    path = distilled_dir / "student.json"
    record = json.loads(path.read_text())
    gate = record["distill"]["gate"]
    assert gate["passed"] is True and LazyEncoder(distilled_dir).note == ""
    assert set(gate["figures"]) >= {"cosine", "words", "top1"} and gate["required"]

    gate["passed"] = False
    path.write_text(json.dumps(record))
    enc = LazyEncoder(distilled_dir)
    assert enc.text_encoder == "lm" and "\n" not in enc.note
    assert "failed its quality check" in enc.note and "cosine" in enc.note and "needs" in enc.note
    asked = LazyEncoder(
        distilled_dir, text_encoder="student"
    )  # an explicit choice is honoured, with the note
    assert asked.text_encoder == "student" and "failed its quality check" in asked.note

    del record["distill"]["gate"]
    path.write_text(json.dumps(record))
    old = LazyEncoder(distilled_dir)
    assert old.text_encoder == "lm" and "before students were checked" in old.note


def test_a_starved_student_fails_its_check_and_queries_use_the_lm(distilled_dir, tiny_model_dir, tmp_path):
    """One training step: the check fails, distill says so (exit 1, with the figures), the folder's earlier
    student that passed is kept, and a starved student alone is not used: the query's answer is the LM's."""
    from lexsearch.index.store import Collection
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.search import search

    folder = tmp_path / "captions"
    paths = make_images(folder / "images", 6)
    rows = [{"image": f"images/{p.name}", "caption": TINY_TEXTS[i]} for i, p in enumerate(paths)]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (distilled_dir / "student.json").read_text()
    args = ["distill", "--data", str(folder), "--steps", "1", "--minutes", "1", "--device", "cpu"]
    res = CliRunner().invoke(cli, [*args, "--model", str(distilled_dir)])
    assert res.exit_code == 1, res.output
    assert "Held-out agreement with the LM: cosine" in res.stdout and "top-3 words" in res.stdout
    assert "Quality check failed" in res.stderr and "keeps its earlier student" in res.stderr
    assert (distilled_dir / "student.json").read_text() == before  # the student that passed is kept

    res = CliRunner().invoke(cli, [*args, "--model", str(tiny_model_dir)])
    assert res.exit_code == 1 and "Quality check failed" in res.stderr, res.output
    record = json.loads((tiny_model_dir / "student.json").read_text())["distill"]
    assert record["steps"] == 1 and record["gate"]["passed"] is False
    assert LazyEncoder(tiny_model_dir).text_encoder == "lm"

    col = _index(tiny_model_dir, tmp_path)
    query = CliRunner().invoke(cli, ["query", "a red circle", "--collection", col, "--json"])
    assert query.exit_code == 0, query.output
    assert "note: queries use the LM" in query.stderr and "failed its quality check" in query.stderr
    with Collection.open(col, readonly=True) as c:
        lm = search(c, LazyEncoder(tiny_model_dir, text_encoder="lm"), "a red circle", top=6)
        # A server of the collection answers too, through the LM (its encoder carries the note, nothing more).
        from lexsearch.search import load_encoder
        from lexsearch.serve import SearchService

        served = SearchService(c, load_encoder(c, device="cpu"))
        assert served.encoder.text_encoder == "lm" and served.encoder.note
        assert [r["path"] for r in served.search("a red circle", 6)] == [r.path for r in lm]
    assert [r["path"] for r in json.loads(query.stdout)] == [r.path for r in lm]


def test_agreement_figures():
    """The check's figures: top-3 word agreement, and the student's top answer counted as the LM's when the
    LM scores it within a near-tie of its own 10th."""
    import torch

    from lexsearch.model.student import GATE, passes
    from lexsearch.train.distill import agreement

    s = torch.tensor([[0.9, 0.5, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.5, 0.9]])
    s_hat = torch.tensor([[0.8, 0.6, 0.0, 0.2, 0.3], [0.1, 0.2, 0.3, 0.5, 0.9]])  # row 0: 2 of the top 3
    scores = torch.linspace(1.0, 0.0, 12).repeat(2, 1)  # the LM's 10th best: 1 - 9/11
    pick = torch.zeros(2, 12)
    pick[0, 9], pick[1, 11] = 1.0, 1.0  # row 0 picks the LM's 10th, row 1 its last
    f = agreement(s_hat, s, pick, scores)
    assert f["words"] == pytest.approx((2 / 3 + 1) / 2)
    assert f["top1"] == pytest.approx(0.5)
    assert f["cosine"] < 1.0
    assert passes({k: 1.0 for k in GATE}) and not passes({**{k: 1.0 for k in GATE}, "words": 0.5})
    assert not passes({}) and passes({"cosine": 1.0, "words": 1.0})  # no bank: top1 is not required


def test_student_and_lm_vectors_never_answer_for_each_other(distilled_dir, tmp_path):
    from lexsearch.index.store import Collection
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.search import search
    from lexsearch.search.query import encode_query

    col_path = _index(distilled_dir, tmp_path)
    with Collection.open(col_path, readonly=True) as col:
        lm = LazyEncoder(distilled_dir, device="cpu", text_encoder="lm")
        by_lm = search(col, lm, "a red circle", top=6, expand=True)
        student = LazyEncoder(distilled_dir, device="cpu")
        by_student = search(col, student, "a red circle", top=6, expand=True)
        assert student.student is not None and not student.loaded
        again = LazyEncoder(distilled_dir, device="cpu", text_encoder="lm")
        assert [r.score for r in search(col, again, "a red circle", top=6, expand=True)] == [
            r.score for r in by_lm
        ]
        assert not again.loaded  # the LM's own cached vector, not the student's
        assert [r.score for r in by_student] != [r.score for r in by_lm]
        # Explanations still sum exactly to the score: the words come from the very vectors that scored.
        q = encode_query(col, student, "a red circle")[0].toarray()[0]
        for r in by_student:
            terms, weights = col.forward([r.image_id])[r.image_id]
            assert abs(float(q[terms] @ weights) - r.lexical) < 1e-5
            assert abs(sum(w for _, w in r.words) + r.rest - r.lexical) < 1e-5


def _fresh_process(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


HEAVY = "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"


def test_a_new_query_through_the_student_imports_no_torch(distilled_dir, tmp_path):
    col = _index(distilled_dir, tmp_path)
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        f"res = CliRunner().invoke(cli, ['query', 'a green square', '--collection', {col!r}, '--json'])\n"
        "assert res.exit_code == 0, res.output\n"
        "assert json.loads(res.output), res.output\n" + HEAVY
    )
    assert _fresh_process(code) == "[]"
    # --text-encoder lm is the exact LM path: it does load torch.
    code_lm = code.replace("'--json']", "'--json', '--text-encoder', 'lm']").replace("a green", "a blue")
    assert "torch" in _fresh_process(code_lm)


def test_an_unchanged_index_run_imports_no_torch(tiny_model_dir, tmp_path):
    col = _index(tiny_model_dir, tmp_path)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        f"args = ['index', {str(tmp_path / 'photos')!r}, '--model', {str(tiny_model_dir)!r}, "
        f"'--collection', {col!r}]\n"
        "res = CliRunner().invoke(cli, args)\n"
        "assert res.exit_code == 0, res.output\n"
        "assert '0 indexed, 6 unchanged' in res.output, res.output\n" + HEAVY
    )
    assert _fresh_process(code) == "[]"


def test_distill_cli_messages(tmp_path, distilled_dir):
    runner = CliRunner()
    res = runner.invoke(cli, ["distill", "--model", str(tmp_path), "--data", str(tmp_path)])
    assert res.exit_code != 0 and "not a lexsearch model" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["distill", "--model", str(distilled_dir), "--data", str(tmp_path / "none")])
    assert res.exit_code != 0 and "not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["query", "red", "--text-encoder", "bert"])
    assert res.exit_code != 0 and "bert" in res.output


def test_labelling_stops_at_its_deadline(tiny_model_dir):
    """On a busy machine the teacher's labelling stops at its deadline (after the batch in hand), so the
    distillation's hard cap holds even when labelling every text would outlast it."""
    import time

    import torch

    from lexsearch.model import Encoder
    from lexsearch.train.distill import teacher_hidden

    model = Encoder.load(tiny_model_dir, device="cpu").model
    texts = TINY_TEXTS[:40]
    every = teacher_hidden(model, texts, torch.device("cpu"), batch_size=8)
    cut = teacher_hidden(model, texts, torch.device("cpu"), batch_size=8, deadline=time.monotonic() - 1)
    assert every.shape[0] == 40 and cut.shape[0] == 8
    torch.testing.assert_close(cut, every[:8])


def test_a_query_with_a_word_the_student_never_saw_goes_to_the_lm(distilled_dir, tmp_path):
    """student.json records the training captions' words; under auto a text with any other word (another
    language, a word no caption used) is encoded by the LM, with a note naming it, and the rest by the student.
    """
    from lexsearch.model import Encoder
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.model.vocab import caption_words

    record = json.loads((distilled_dir / "student.json").read_text())
    assert record["words"] == sorted(caption_words(TINY_TEXTS))
    enc = LazyEncoder(distilled_dir, device="cpu")
    assert enc.route("A Green square!") == ("student", "")
    route, note = enc.route("un cuadrado verde")
    assert route == "lm" and "'cuadrado'" in note and "'verde'" in note and "student" in note
    assert enc.route("a red circle with stripes")[0] == "lm"  # no caption used "stripes"
    assert enc.route("the red circle")[0] == "student"  # a function word is no reason to load the LM
    assert enc.query_key("a red circle") != enc.query_key("a red circle with stripes")

    texts = ["a red circle", "un cuadrado verde", "a large blue star"]
    mixed = enc.encode_texts(texts, sparsify="none")
    assert enc.loaded  # the LM loaded for the unseen words only
    lm = Encoder.load(distilled_dir, device="cpu").encode_texts(texts[1:2], sparsify="none")
    np.testing.assert_allclose(mixed.sparse[1].toarray(), lm.sparse.toarray(), atol=1e-6)
    np.testing.assert_allclose(mixed.dense[1], lm.dense[0], atol=1e-6)
    alone = enc.student.encode_texts([texts[0], texts[2]], sparsify="none")
    np.testing.assert_allclose(mixed.sparse[[0, 2]].toarray(), alone.sparse.toarray(), atol=1e-6)
    res = CliRunner().invoke(cli, ["explain", "--text", "un cuadrado verde", "--model", str(distilled_dir)])
    assert res.exit_code == 0, res.output
    assert "note: this query uses the LM: 'un', 'cuadrado', 'verde' are not words" in res.stderr
    # An explicit --text-encoder student answers every text; a record without words routes nothing.
    assert LazyEncoder(distilled_dir, text_encoder="student").route("un cuadrado verde")[0] == "student"
    del record["words"]
    (distilled_dir / "student.json").write_text(json.dumps(record))
    assert LazyEncoder(distilled_dir).route("un cuadrado verde") == ("student", "")


def test_in_a_fresh_process_unseen_words_are_answered_by_the_lm_with_a_note(distilled_dir, tmp_path):
    col = _index(distilled_dir, tmp_path)
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        "args = ['query', 'QUERY', '--collection', COL, '--json']\n"
        "res = CliRunner().invoke(cli, args)\n"
        "assert res.exit_code == 0, res.output\n"
        "print(json.dumps([json.loads(res.stdout), res.stderr]))\n" + HEAVY
    ).replace("COL", repr(col))

    def run(query: str, *extra: str) -> tuple[list, str, str]:
        src = code.replace("'QUERY'", repr(query)).replace(
            "'--json']", f"'--json', {', '.join(map(repr, extra))}]"
        )
        out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        results, stderr = json.loads(lines[-2])
        return results, stderr, lines[-1]

    results, stderr, heavy = run("a green square")
    assert heavy == "[]" and "uses the LM" not in stderr and results  # the student, no torch
    results, stderr, heavy = run("un cuadrado verde")
    assert "torch" in heavy
    assert "note: this query uses the LM: 'un', 'cuadrado', 'verde' are not words the student" in stderr
    by_lm, _, _ = run("un cuadrado verde", "--text-encoder", "lm")
    assert [r["path"] for r in results] == [r["path"] for r in by_lm]
    assert [r["score"] for r in results] == [r["score"] for r in by_lm]
