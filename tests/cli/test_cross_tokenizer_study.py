"""`fdistill cross-tokenizer`: the study end to end on tiny models with two different tokenizers; resume; refusals."""

import json
import math

import pytest
import transformers

from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.studies import cross_tokenizer as study
from fdistill.studies.cross_tokenizer import VARIANTS, CrossSettings, run_study
from fdistill.testing import cross_tokenizers

transformers.logging.set_verbosity_error()
WORDS = ["ab", "ba", "abba", "b a", "a b", "bab", "aab", "bb a"]


@pytest.fixture(scope="module")
def pair_settings(tmp_path_factory):
    """Study settings on a tiny pair saved as folders: teacher SentencePiece-style, student byte-level BPE."""
    root = tmp_path_factory.mktemp("pair")
    student_tok, teacher_tok = cross_tokenizers()
    for name, tok, seed in (("teacher", teacher_tok, 0), ("student", student_tok, 1)):
        tiny.llama(1, seed=seed, hidden=16, init=0.1, tokenizer=tok).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rows = [{"prompt": f"{a} {b}", "reference": b} for a in WORDS for b in WORDS[:2]]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(
        teacher=str(root / "teacher"),
        teacher_gguf_file=None,
        student=str(root / "student"),
        student_gguf_file=None,
        student_layers=None,
        data=str(root / "data.jsonl"),
        prompt_template="{prompt} ",
    )


def test_the_study_runs_every_variant_and_resumes(pair_settings, tmp_path, monkeypatch):
    settings = CrossSettings.quick(**pair_settings, variants=list(VARIANTS))
    out = tmp_path / "study"
    result = run_study(str(out), settings, command="fdistill cross-tokenizer --quick")
    runs = {(r["variant"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {(v, s) for v in VARIANTS for s in (0, 1)}
    for r in runs.values():
        m = r["metrics"]
        assert all(math.isfinite(m[k]) for k in ("kl", "rkl", "js", "tvd", "r_llh_char", "r_cvg_char"))
        assert 0 <= m["teacher/chrf"] <= 100 and r["train_log"], r["variant"]
    # the variants train differently from one start: the evaluation samples are paired, the students are not equal
    assert len({round(r["metrics"]["kl"], 9) for r in runs.values()}) > 1
    report = (out / "report.md").read_text()
    assert "Does any f-DISTILL kind beat ULD, the hybrid and SeqKD?" in report and "**Answer:" in report
    assert "| kl vs uld |" in report and "| tvd vs seqkd |" in report and "not the canonical tokenization" in report
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == len(runs) and saved["settings"]["distill_steps"] == 2

    # resumed: finished runs are never trained again; a lost record is redone, alone
    (out / "runs" / "js" / "seed1.json").unlink()
    trained = []
    real = study.run_one
    monkeypatch.setattr(
        study, "run_one", lambda shared, name, seed: trained.append((name, seed)) or real(shared, name, seed)
    )
    again = run_study(str(out), settings)
    assert trained == [("js", 1)] and len(again["runs"]) == len(runs)

    # other fixed settings: refused before any work
    with pytest.raises(InputError, match="other settings.*distill_steps"):
        run_study(str(out), CrossSettings.quick(**pair_settings, distill_steps=3))


def test_a_run_killed_midway_loses_nothing_finished(pair_settings, tmp_path, monkeypatch):
    settings = CrossSettings.quick(**pair_settings, variants=["kl", "seqkd"], seeds=[0])
    real, calls = study.run_one, []

    def crashing(shared, name, seed):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second run
        return real(shared, name, seed)

    monkeypatch.setattr(study, "run_one", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_study(str(tmp_path / "s"), settings)
    assert (tmp_path / "s" / "runs" / "kl" / "seed0.json").exists()
    assert not (tmp_path / "s" / "runs" / "seqkd" / "seed0.json").exists()
    assert not list((tmp_path / "s").rglob("*.tmp"))  # no half-written record
    result = run_study(str(tmp_path / "s"), settings)
    assert calls == ["kl", "seqkd", "seqkd"] and len(result["runs"]) == 2


def test_bad_settings_are_refused_before_any_work(tmp_path):
    for changes, fragment in (
        (dict(variants=["kl", "nope"]), "variants"),
        (dict(seeds=[0, 0]), "seeds"),
        (dict(prompt_template="no slot"), "prompt_template"),
        (dict(distill_steps=0), "distill_steps"),
    ):
        with pytest.raises(InputError, match=fragment):
            run_study(str(tmp_path / "x"), CrossSettings.quick(**changes))
    assert not (tmp_path / "x").exists()


def test_bounded_divergences_at_their_ceiling_are_never_a_verdict():
    log2 = math.log(2.0)
    table = {  # JS at log 2 up to rounding, as when the two sequence distributions barely overlap
        "kl": {s: {"js": log2 - 1e-9 * s, "kl": 60.0 + s} for s in range(3)},
        "uld": {s: {"js": log2 - 3e-9 * s, "kl": 70.0 + 1.1 * s} for s in range(3)},
    }
    assert study._compare(table, "kl", "uld", "js").verdict == "saturated"
    assert study._compare(table, "kl", "uld", "kl").verdict == "better"  # lower KL, paired over 3 seeds


def test_a_recipe_student_with_its_own_tokenizer_and_copied_layers_trains_across_tokenizers(tmp_path):
    """`student:` + `student_layers:` copies the student model's own layers and keeps its tokenizer (the cross path)."""
    import yaml

    from fdistill.cli.train import build_trainer, load_recipe

    student_tok, teacher_tok = cross_tokenizers()
    for name, tok, layers in (("teacher", teacher_tok, 1), ("student", student_tok, 2)):
        tiny.llama(layers, seed=0, hidden=16, init=0.1, tokenizer=tok).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in WORDS))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(teacher=str(tmp_path / "teacher"), student=str(tmp_path / "student"), student_layers=[1],
                 train_data=str(data), objective="tvd", teacher_sampling="online", max_steps=1, max_new_tokens=4,
                 per_device_train_batch_size=4, output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
        )
    )  # fmt: skip
    trainer = build_trainer(*load_recipe(str(recipe), []))
    assert trainer.model.config.num_hidden_layers == 1 and trainer.model.config.vocab_size == len(student_tok)
    assert trainer.processing_class is not None and trainer.processing_class.get_vocab() == student_tok.get_vocab()
    assert trainer.cross is not None and trainer.cross.teacher.get_vocab() == teacher_tok.get_vocab()
    trainer.train()
    assert trainer.state.global_step == 1
