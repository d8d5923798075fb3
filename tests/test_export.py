"""`ulmfit export` (issue 22, part 2): a transformer language model out into transformers' own format,
loaded with no code of ours, giving our logits; and bad inputs as one error line each."""
from __future__ import annotations

import pytest
import torch

from tests.cli_errors import one_error

TEXTS = ["A moving, beautifully acted film.", "Two hours I will never get back."]


@pytest.fixture(scope="module", params=["gpt", "bert"])
def lm_run(request, tmp_path_factory, data_dir):
    """Stages 1-2 of a smoke run with a subword tokenizer (what a transformers tokenizer can hold)."""
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    run = tmp_path_factory.mktemp(f"export-{request.param}")
    cfg = load_config("smoke", [f"model.backbone={request.param}", "tokenizer.kind=bpe", "adapt.max_docs=40",
                                "adapt.frozen_epochs=0"])
    upstream = run_stage(make_context("pretrain", cfg, run / "pretrain")).path
    run_stage(make_context("adapt", cfg, run / "adapt", upstream))
    return request.param, run


def test_the_exported_model_loads_in_transformers_and_gives_our_logits(lm_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from flows.cli import main
    from pipeline.artifacts import load_model_file
    from pipeline.backbones import get_backbone
    from pipeline.text import encoder_from_state

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


def test_export_refuses_bad_inputs(lm_run, tmp_path, capsys):
    _, run = lm_run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    export = ["export", str(run), "--format", "hf", "--out"]
    assert "exists and is not an empty folder" in one_error(capsys, [*export, str(tmp_path / "full")])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert "no finished lm stage" in one_error(capsys, ["export", str(tmp_path / "nothing"), "--format", "hf",
                                                        "--out", str(tmp_path / "o")])
    model = run / "adapt" / "model.pt"
    original = model.read_bytes()
    try:
        model.write_bytes(original[:-10])
        assert "model.pt: corrupted or truncated" in one_error(capsys, [*export, str(tmp_path / "o")])
    finally:
        model.write_bytes(original)
    assert not (tmp_path / "o").exists()


def test_an_lstm_has_no_transformers_export(tmp_path, data_dir, capsys):
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    cfg = load_config("smoke", ["pretrain.max_docs=2"])
    run_stage(make_context("pretrain", cfg, tmp_path / "run" / "pretrain"))
    argv = ["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "o")]
    assert "the awd_lstm backbone has no transformers equivalent" in one_error(capsys, argv)
