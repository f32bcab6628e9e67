"""Evaluation: risks against a hand computation, the report files, and `fdistill evaluate`."""

import json

import pytest
import torch
import transformers

import fdistill.metrics as metrics_module
import fdistill.sampling as sampling_module
from fdistill import testing as tiny
from fdistill.cli import main
from fdistill.evaluation import combine_results, evaluate_model, write_report

transformers.logging.set_verbosity_error()


def naive_nll(model, prompt_ids: list[int], completion: list[int]) -> float:
    """−log P(completion | prompt) by re-running the unpadded prefix at every step."""
    total = 0.0
    for t, token in enumerate(completion):
        if model.config.is_encoder_decoder:
            decoder = torch.tensor([[model.config.decoder_start_token_id] + completion[:t]])
            logits = model(input_ids=torch.tensor([prompt_ids]), decoder_input_ids=decoder).logits[0, -1]
        else:
            logits = model(input_ids=torch.tensor([prompt_ids + completion[:t]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), -1)[token].item()
    return total


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_risks_match_a_hand_computation(arch, monkeypatch):
    tok = tiny.tokenizer()
    teacher, student = getattr(tiny, arch)(2, seed=0, init=0.15).eval(), getattr(tiny, arch)(1, seed=1).eval()
    prompts = ["the cat sat", "a dog", "big red log on the mat"]  # different lengths: padding matters
    fixed = {id(teacher): [[5, 6, 2], [7, 2], [8, 9, 10, 11]], id(student): [[12, 2], [13, 14, 15], [2]]}

    def fake_sample(model, prompt_ids, prompt_mask, config):
        rows = fixed[id(model)]
        ids = torch.full((len(rows), 4), tok.pad_token_id)
        mask = torch.zeros(len(rows), 4, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
        return ids, mask

    monkeypatch.setattr(sampling_module, "sample_completions", fake_sample)
    out = metrics_module.sequence_divergences(student, teacher, tok, prompts, max_new_tokens=4)
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    r_llh = [naive_nll(teacher, p, c) for p, c in zip(prompt_ids, fixed[id(student)])]
    r_cvg = [naive_nll(student, p, c) for p, c in zip(prompt_ids, fixed[id(teacher)])]
    assert out["r_llh"] == pytest.approx(sum(r_llh) / 3, rel=1e-5)
    assert out["r_cvg"] == pytest.approx(sum(r_cvg) / 3, rel=1e-5)
    assert out["r_llh_token"] == pytest.approx(sum(r_llh) / 6, rel=1e-5)  # 6 student tokens
    assert out["r_cvg_token"] == pytest.approx(sum(r_cvg) / 9, rel=1e-5)  # 9 teacher tokens


def test_evaluate_model_and_report(tmp_path):
    tok = tiny.tokenizer()
    teacher, student = tiny.llama(2, seed=0, init=0.15), tiny.llama(1, seed=1)
    data = tiny.dataset(6, seed=3)
    result, texts = evaluate_model(student, tok, data["prompt"], {"reference": data["reference"]}, teacher=teacher,
                                   max_new_tokens=5)
    assert len(texts) == 6
    for key in ("reference/bleu", "reference/rouge1", "reference/distinct2", "r_llh", "r_cvg", "kl", "js", "parameters"):
        assert key in result
    assert result["parameters"] == sum(p.numel() for p in student.parameters())
    paths = write_report({"student": result}, str(tmp_path))
    assert json.loads(open(paths["json"]).read())["student"]["r_llh"] == result["r_llh"]
    assert "| student |" in open(paths["markdown"]).read()
    assert open(paths["plot"], "rb").read(4) == b"\x89PNG"


def test_evaluate_command_and_combine(tmp_path):
    tok = tiny.tokenizer()
    for name, model in (("teacher", tiny.llama(2, seed=0, init=0.15)), ("s1", tiny.llama(1, seed=1)), ("s2", tiny.llama(1, seed=2))):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    tiny.dataset(5, seed=4).to_json(str(tmp_path / "test.jsonl"))
    common = ["evaluate", "--teacher", str(tmp_path / "teacher"), "--data", str(tmp_path / "test.jsonl"), "--split", "train",
              "--max-new-tokens", "5"]
    main(common + ["--models", f"s1={tmp_path / 's1'}", "--output", str(tmp_path / "a")])
    main(common + ["--models", f"s2={tmp_path / 's2'}", "--include-teacher", "--teacher-dist", "--output", str(tmp_path / "b")])
    main(["evaluate", "--combine", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"),
          "--output", str(tmp_path / "c")])
    combined = json.loads((tmp_path / "c" / "results.json").read_text())
    assert set(combined) == {"s1", "s2", "teacher"} and "teacher_dist" in combined["teacher"]
    assert combined == combine_results([str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")])


def test_evaluate_command_rejects_bad_input_before_work(tmp_path, capsys):
    tiny.dataset(3, seed=4).to_json(str(tmp_path / "test.jsonl"))
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(tmp_path / "test.jsonl"), "--split", "train", "--reference-column", "gold",
              "--models", "x=/nonexistent", "--output", str(tmp_path / "o")])
    assert "no column 'gold'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
