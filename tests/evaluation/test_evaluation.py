"""Evaluation: risks against a hand computation, the report files, and `fdistill evaluate`."""

import json

import pytest
import torch
import transformers

import fdistill.evaluation.metrics as metrics_module
import fdistill.lm.sampling as sampling_module
from fdistill import testing as tiny
from fdistill.cli import main
from fdistill.evaluation.report import combine_results, evaluate_model, generate_texts, write_report

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
    result, texts = evaluate_model(
        student, tok, data["prompt"], {"reference": data["reference"]}, teacher=teacher, max_new_tokens=5
    )
    assert len(texts) == 6
    for key in (
        "reference/bleu",
        "reference/rouge1",
        "reference/distinct2",
        "r_llh",
        "r_cvg",
        "kl",
        "js",
        "parameters",
    ):
        assert key in result
    assert result["parameters"] == sum(p.numel() for p in student.parameters())
    paths = write_report({"student": result}, str(tmp_path))
    assert json.loads(open(paths["json"]).read())["student"]["r_llh"] == result["r_llh"]
    assert "| student |" in open(paths["markdown"]).read()
    assert open(paths["plot"], "rb").read(4) == b"\x89PNG"


def test_evaluate_command_and_combine(tmp_path):
    tok = tiny.tokenizer()
    for name, model in (
        ("teacher", tiny.llama(2, seed=0, init=0.15)),
        ("s1", tiny.llama(1, seed=1)),
        ("s2", tiny.llama(1, seed=2)),
    ):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    tiny.dataset(5, seed=4).to_json(str(tmp_path / "test.jsonl"))
    common = [
        "evaluate",
        "--teacher",
        str(tmp_path / "teacher"),
        "--data",
        str(tmp_path / "test.jsonl"),
        "--split",
        "train",
        "--max-new-tokens",
        "5",
    ]
    main(common + ["--models", f"s1={tmp_path / 's1'}", "--output", str(tmp_path / "a")])
    main(
        common
        + ["--models", f"s2={tmp_path / 's2'}", "--include-teacher", "--teacher-dist", "--output", str(tmp_path / "b")]
    )
    main(
        [
            "evaluate",
            "--combine",
            str(tmp_path / "a" / "results.json"),
            str(tmp_path / "b" / "results.json"),
            "--output",
            str(tmp_path / "c"),
        ]
    )
    combined = json.loads((tmp_path / "c" / "results.json").read_text())
    assert set(combined) == {"s1", "s2", "teacher"} and "teacher_dist" in combined["teacher"]
    assert combined == combine_results([str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")])


def test_evaluate_command_names_a_missing_reference_column(tmp_path, capsys):
    tiny.dataset(3, seed=4).to_json(str(tmp_path / "test.jsonl"))
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--data",
                str(tmp_path / "test.jsonl"),
                "--split",
                "train",
                "--reference-column",
                "gold",
                "--models",
                "x=/nonexistent",
                "--output",
                str(tmp_path / "o"),
            ]
        )
    assert "no column 'gold'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "0"], "batch_size=0 must be ≥ 1: give a whole number ≥ 1"),
        (["--batch-size", "-4"], "batch_size=-4 must be ≥ 1"),
        (["--max-new-tokens", "0"], "max_new_tokens=0 must be ≥ 1"),
        (["--max-new-tokens", "-1"], "max_new_tokens=-1 must be ≥ 1"),
        (["--limit", "0"], "limit=0 must be ≥ 1"),
        (["--limit", "-2"], "limit=-2 must be ≥ 1"),
        (["--metrics", "bleu", "meteor"], r"unknown metric\(s\) \['meteor'\]"),
        (["--models", "=x"], "--models expects NAME=PATH, got '=x'"),
        (["--models", "a=x", "a=y"], "--models names 'a' twice"),
        (["--include-teacher"], "need --teacher"),
        (["--against-teacher"], "need --teacher"),
        (["--reference-column", "gold"], "no column 'gold'.*leave the option out"),
        (["--data", "{nulls}"], r"column 'reference'\[1\]=None is not valid"),
        (["--data", "{nulls}", "--prompt-column", "question"], r"question.*None"),
        (["--data", "{noref}"], "no reference column 'reference'.*nothing to compare"),
        (["--output", "{file}"], r"output='.*results.json' is not valid: it is an existing file"),
        (["--output", "{file}/sub"], "output=.* cannot be created: .* is a file"),
        (["--combine", "{file}"], "results file=.* cannot be read: it is not JSON"),
        (["--combine", "{missing}"], "results file=.* does not exist"),
    ],
)
def test_evaluate_command_rejects_bad_input_before_work(tmp_path, capsys, extra, match):
    data = str(tmp_path / "test.jsonl")
    tiny.dataset(3, seed=4).to_json(data)
    fill = {
        "nulls": _jsonl(
            tmp_path / "nulls.jsonl",
            [{"prompt": "a", "question": None, "reference": "b"}, {"prompt": "c", "question": "d", "reference": None}],
        ),
        "noref": _jsonl(tmp_path / "noref.jsonl", [{"prompt": "a cat"}]),
        "file": str(tmp_path / "results.json"),
        "missing": str(tmp_path / "missing.json"),
    }
    (tmp_path / "results.json").write_text("not json")
    argv = [
        "evaluate",
        "--data",
        data,
        "--split",
        "train",
        "--models",
        "x=/nonexistent",
        "--output",
        str(tmp_path / "o"),
    ]
    argv += [e.format(**fill) for e in extra]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (no progress bars)
    assert len(errors) == 1 and errors[0].startswith("fdistill evaluate: error: ")  # one line, no traceback
    assert __import__("re").search(match, errors[0]), errors[0]
    assert not (tmp_path / "o").exists()  # nothing written


def test_evaluate_without_references_and_against_the_teacher(tmp_path):
    tok = tiny.tokenizer()
    for name, model in (("teacher", tiny.llama(2, seed=0, init=0.15)), ("s1", tiny.llama(1, seed=1))):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    data = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in tiny.prompts(4, seed=2)])
    main(
        [
            "evaluate",
            "--teacher",
            str(tmp_path / "teacher"),
            "--data",
            data,
            "--split",
            "train",
            "--max-new-tokens",
            "4",
            "--models",
            f"s1={tmp_path / 's1'}",
            "--include-teacher",
            "--against-teacher",
            "--metrics",
            "bleu",
            "rouge",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    s1 = results["s1"]
    assert "r_llh" in s1 and "kl" in s1 and "teacher/bleu" in s1 and "teacher/rougeL" in s1
    assert s1["teacher/tokenize"] == "13a"  # the tokenisation is recorded
    assert not any(k.startswith("reference/") for r in results.values() for k in r)
    assert "no column 'reference'" in s1["skipped"] and "no column 'reference'" in results["teacher"]["skipped"]
    report = (tmp_path / "out" / "results.md").read_text()
    assert "- skipped: reference metrics (bleu, rouge): the test data has no column 'reference'" in report
    assert "(all models)" in report and "teacher/tokenize: 13a" in report


def test_report_keeps_non_finite_values_visible(tmp_path):
    results = {
        "a": {"kl": float("nan"), "r_llh": float("inf"), "bleu": 3.0, "reference/tokenize": "zh"},
        "b": {"kl": 1.5, "r_llh": 2.0, "bleu": float("-inf"), "reference/tokenize": "zh"},
    }
    paths = write_report(results, str(tmp_path / "r"))
    text = open(paths["json"]).read()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))["a"]["kl"] == "NaN"
    md = open(paths["markdown"]).read()
    assert "**NaN**" in md and "**inf**" in md and "**-inf**" in md
    assert "**3 non-finite value(s)**" in md and "a: kl, a: r_llh, b: bleu" in md
    assert "reference/tokenize: zh (all models)" in md and "| zh |" not in md  # text values below the table
    back = combine_results([paths["json"]])
    assert (
        back["a"]["r_llh"] == float("inf") and back["b"]["bleu"] == float("-inf") and back["a"]["kl"] != back["a"]["kl"]
    )
    assert back["a"]["reference/tokenize"] == "zh"


def test_evaluate_model_checks_its_arguments_before_work(monkeypatch):
    import fdistill.evaluation.report as ev

    monkeypatch.setattr(ev, "generate_texts", lambda *a, **k: pytest.fail("generated before the checks"))
    tok, model = tiny.tokenizer(), tiny.llama(1, seed=1)
    with pytest.raises(ValueError, match="there are no prompts"):
        evaluate_model(model, tok, [], {})
    with pytest.raises(ValueError, match="2 prompts but 1 references 'reference'"):
        evaluate_model(model, tok, ["a", "b"], {"reference": ["x"]})
    with pytest.raises(ValueError, match=r"references 'reference'\[1\]=None is not valid"):
        evaluate_model(model, tok, ["a", "b"], {"reference": ["x", None]})
    with pytest.raises(ValueError, match="tokenize='words' is not valid"):
        evaluate_model(model, tok, ["a"], {}, tokenize="words")
    with pytest.raises(ValueError, match="risk_samples=0 must be ≥ 1"):
        evaluate_model(model, tok, ["a"], {}, risk_samples=0)


def test_a_model_with_nan_logits_stops_the_evaluation_with_one_line(tmp_path, capsys):
    from fdistill.errors import NonFiniteError

    tok, teacher, broken = tiny.tokenizer(), tiny.llama(2, seed=0, init=0.15), tiny.llama(1, seed=1)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="the student's next-token probabilities hold NaN or inf"):
        metrics_module.sequence_divergences(broken, teacher, tok, ["the cat"], max_new_tokens=3)
    for name, model in (("teacher", teacher), ("broken", broken)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    tiny.dataset(2, seed=4).to_json(str(tmp_path / "test.jsonl"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "evaluate",
                "--teacher",
                str(tmp_path / "teacher"),
                "--data",
                str(tmp_path / "test.jsonl"),
                "--split",
                "train",
                "--max-new-tokens",
                "3",
                "--models",
                f"b={tmp_path / 'broken'}",
                "--output",
                str(tmp_path / "o"),
            ]
        )
    assert stop.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "student's next-token probabilities hold NaN" in errors[0]
    assert not (tmp_path / "o").exists()


def test_evaluation_leaves_the_callers_rng_untouched_and_repeats_for_a_seed():
    """Seeded sampling happens in a scoped RNG: the caller's state is unchanged and a seed gives the same numbers."""
    tok = tiny.tokenizer()
    teacher, student = tiny.llama(2, seed=0, init=0.15), tiny.llama(1, seed=1)
    prompts = tiny.prompts(5, seed=2)
    kw = {"num_samples": 2, "max_new_tokens": 5, "batch_size": 3, "seed": 4}

    def calls():
        return (
            metrics_module.sequence_divergences(student, teacher, tok, prompts, **kw),
            metrics_module.teacher_completions(teacher, tok, prompts, **kw),
            generate_texts(teacher, tok, prompts, decoding="sample", **kw).texts,
            evaluate_model(student, tok, prompts, {}, teacher=teacher, max_new_tokens=5, batch_size=3, seed=4)[0],
        )

    torch.manual_seed(99)
    state = torch.get_rng_state()
    first = calls()
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # the caller's own draws change nothing
    second = calls()
    assert first[0] == second[0] and first[2] == second[2]
    assert all(torch.equal(x, y) for a, b in zip(first[1], second[1]) for x, y in zip(a, b))
    speed = ("generation_tokens_per_s",)
    assert {k: v for k, v in first[3].items() if k not in speed} == {
        k: v for k, v in second[3].items() if k not in speed
    }
    assert first[0] != metrics_module.sequence_divergences(student, teacher, tok, prompts, **{**kw, "seed": 5})
