"""`ulmfit export` (issue 22, part 2): a transformer language model out into transformers' own format,
loaded with no code of ours, giving our logits; every backbone's classifier out as ONNX, scored by
onnxruntime and the folder's own score.py as `ulmfit predict` scores it; bad inputs as one error line each."""
from __future__ import annotations

import pytest
import torch

from tests.cli_errors import one_error

TEXTS = ["A moving, beautifully acted film.", "Two hours I will never get back."]


CHAINS: dict[str, object] = {}  # backbone -> run folder, trained once per module


def trained_run(backbone: str, tmp_path_factory):
    """A smoke run's three stages, in fp32 (the ONNX export's arithmetic), with a subword tokenizer for a
    transformer (what a transformers tokenizer can hold) and spaCy words for the LSTM (its default)."""
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    if backbone not in CHAINS:
        run = tmp_path_factory.mktemp(f"export-{backbone}")
        words = ["tokenizer.kind=bpe"] if backbone != "awd_lstm" else []
        cfg = load_config("smoke", [f"model.backbone={backbone}", *words, "adapt.max_docs=40", "adapt.frozen_epochs=0",
                                    "precision=fp32"])
        upstream = None
        for stage in ("pretrain", "adapt", "classify"):
            upstream = run_stage(make_context(stage, cfg, run / stage, upstream)).path
        CHAINS[backbone] = run
    return CHAINS[backbone]


@pytest.fixture(scope="module", params=["gpt", "bert"])
def lm_run(request, tmp_path_factory, data_dir):
    return request.param, trained_run(request.param, tmp_path_factory)


def test_the_exported_model_loads_in_transformers_and_gives_our_logits(lm_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from flows.cli import main
    from pipeline.artifacts.model_file import load_model_file
    from pipeline.data.encoders import encoder_from_state
    from pipeline.models.backbones import get_backbone

    name, run = lm_run
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in (tmp_path / "hf").iterdir()}
    auto = AutoModelForCausalLM if name == "gpt" else AutoModelForMaskedLM
    theirs = auto.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)

    saved = load_model_file(run / "adapt")
    ours = get_backbone(name).build_lm(saved.arch).eval()
    ours.load_state_dict(saved.state_dict)
    encoder = encoder_from_state(saved.tokenizer, saved.vocab)
    for text, ids in zip(TEXTS, encoder.encode(TEXTS, cache=False)):
        assert tokenizer(text)["input_ids"] == ids.tolist()  # the same ids, bos first, as the stages read
        batch = torch.as_tensor(ids)[None]
        with torch.no_grad():
            assert torch.allclose(theirs(input_ids=batch).logits, ours(batch), atol=1e-5)
    if name == "gpt":  # and it generates, as any transformers causal LM does
        prompt = tokenizer(TEXTS[0], return_tensors="pt")
        generated = theirs.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert generated.shape[1] == prompt["input_ids"].shape[1] + 5


def refuses_bad_inputs(run, fmt: str, model_stage: str, no_stage: str, tmp_path, capsys) -> None:
    """One error line each, nothing written: an --out that is not empty (its file kept), a run
    without the stage the format exports, a truncated model.pt."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    export = ["export", str(run), "--format", fmt, "--out"]
    assert "exists and is not an empty folder" in one_error(capsys, [*export, str(tmp_path / "full")])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "lm-only" / "pretrain").mkdir(parents=True)
    assert no_stage in one_error(capsys, ["export", str(tmp_path / "lm-only"), "--format", fmt,
                                          "--out", str(tmp_path / "o")])
    model = run / model_stage / "model.pt"
    original = model.read_bytes()
    try:
        model.write_bytes(original[:-10])
        assert "model.pt: corrupted or truncated" in one_error(capsys, [*export, str(tmp_path / "o")])
    finally:
        model.write_bytes(original)
    assert not (tmp_path / "o").exists()


def test_export_refuses_bad_inputs(lm_run, tmp_path, capsys):
    refuses_bad_inputs(lm_run[1], "hf", "adapt", "no finished lm stage", tmp_path, capsys)


def test_an_lstm_has_no_transformers_export(tmp_path, data_dir, capsys):
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    cfg = load_config("smoke", ["pretrain.max_docs=2"])
    run_stage(make_context("pretrain", cfg, tmp_path / "run" / "pretrain"))
    argv = ["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "o")]
    assert "the awd_lstm backbone has no transformers equivalent" in one_error(capsys, argv)


# --- ONNX: every backbone's classifier ---------------------------------------------------------------

@pytest.fixture(scope="module", params=["awd_lstm", "gpt", "bert"])
def onnx_export(request, tmp_path_factory, data_dir):
    """A trained run and its `ulmfit export --format onnx` folder."""
    from flows.cli import main

    run = trained_run(request.param, tmp_path_factory)
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "model"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    return run, out


@pytest.fixture(scope="module")
def fifty_reviews(data_dir):
    """50 test reviews; most are longer than the smoke preset's max_tokens (cut) and max_len (pooling window)."""
    from pipeline.data.corpora import load_corpus

    return load_corpus("imdb", "test", data_dir=data_dir)["text"].sample(50, random_state=1).tolist()


def test_onnx_scores_as_ulmfit_predict_does_with_none_of_our_code(onnx_export, fifty_reviews, tmp_path):
    """onnxruntime through the folder's own score.py, in a process that never imports pipeline or flows,
    gives `ulmfit predict`'s probabilities (1e-4) and labels on 50 test reviews."""
    import json
    import subprocess
    import sys

    import numpy as np

    from pipeline.use.predict import Classifier, predict_stream

    run, out = onnx_export
    assert {"model.onnx", "config.json", "vocab.json", "score.py", "README.md"} <= {p.name for p in out.iterdir()}
    (tmp_path / "texts.json").write_text(json.dumps(fifty_reviews))
    script = (f"import json, sys; import numpy as np; sys.path.insert(0, {str(out)!r}); from score import Scorer; "
              f"texts = json.load(open({str(tmp_path / 'texts.json')!r})); "
              f"np.save({str(tmp_path / 'probs.npy')!r}, Scorer({str(out)!r}).probs(texts)); "
              "assert not [m for m in sys.modules if m.split('.')[0] in ('pipeline', 'flows')], 'imported our code'")
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "probs.npy")

    classes = json.loads((out / "config.json").read_text())["classes"]
    predicted = list(predict_stream(run, fifty_reviews))
    assert [label for _, label, _ in predicted] == [classes[k] for k in theirs.argmax(axis=1)]
    np.testing.assert_allclose([prob for _, _, prob in predicted], theirs.max(axis=1), atol=1e-4)
    np.testing.assert_allclose(Classifier(run).probs(fifty_reviews).numpy(), theirs, atol=1e-4)


def test_score_py_prints_what_ulmfit_predict_prints(onnx_export, fifty_reviews, tmp_path, capsys):
    import json
    import subprocess
    import sys

    from flows.cli import main

    run, out = onnx_export
    texts = [" ".join(text.split()) for text in fifty_reviews[:5]]  # one per line
    (tmp_path / "reviews.txt").write_text("\n".join(texts) + "\n")
    done = subprocess.run([sys.executable, "-I", "score.py", "--file", str(tmp_path / "reviews.txt")], cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["predict", "--run", str(run), "--file", str(tmp_path / "reviews.txt")]) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    theirs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["text"], r["label"]) for r in theirs] == [(r["text"], r["label"]) for r in ours]
    assert all(abs(a["probability"] - b["probability"]) <= 1.5e-4 for a, b in zip(theirs, ours))  # both rounded to 1e-4


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_score_py_cuts_and_orients_as_the_stage_does(direction, truncation):
    """score.py's own copies of classify.truncate and direction.orient give the stage's ids."""
    import numpy as np

    from pipeline.config import ClassifyConfig
    from pipeline.models.direction import orient
    from pipeline.stages.classify import truncate
    from pipeline.use import onnx_score

    cfg = {"max_tokens": 7, "truncation": truncation, "direction": direction, "bos_id": 2}
    cc = ClassifyConfig(max_tokens=7, truncation=truncation)
    for ids in ([2], [2, 5], [2, *range(10, 30)], list(range(10, 30)), [2, 11, 12, 13]):
        ids = np.array(ids)
        expected = orient(truncate(ids, cc), 2, direction)
        assert onnx_score._orient(onnx_score._truncate(ids, cfg), cfg).tolist() == expected.tolist()


def test_onnx_export_refuses_bad_inputs(onnx_export, tmp_path, capsys):
    refuses_bad_inputs(onnx_export[0], "onnx", "classify", "no complete classify stage", tmp_path, capsys)
