"""scripts/bench_rollouts.py's core on tiny models, one or two steps (nothing timed is asserted): the speed rows
(in-process, reuse, TRL), the rows the installed fdistill cannot run reported "not available" with the reason, the
quality runs (resumable) and their tables, and the bad --out refused before any work."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from fdistill import testing as tiny
from fdistill.errors import InputError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rollouts.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_rollouts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()
SIZES = ["--batch", "4", "--completion", "4", "--steps", "1", "--warmup", "1"]


@pytest.fixture(scope="module")
def shared():
    """The paper-claims `Shared` stages, on tiny models instead of the packaged teacher (same attributes, same
    evaluation method)."""
    from fdistill.evaluation.metrics import teacher_completions
    from fdistill.studies.demo import DemoSettings, _train
    from fdistill.studies.paper_claims import ClaimsSettings, Shared

    s = Shared.__new__(Shared)
    s.settings = ClaimsSettings(
        train_prompts=8, eval_prompts=4, curve_prompts=4, max_new_tokens=4, sample_batch_size=4, bertscore=False
    )
    s.teacher, s.tokenizer = tiny.llama(2, seed=0).eval(), tiny.tokenizer()
    s.student = tiny.llama(1, seed=1)
    s.start_state = {k: v.clone() for k, v in s.student.state_dict().items()}
    s.train_data = tiny.dataset(16, seed=0, teacher=s.teacher, tok=s.tokenizer, max_new_tokens=4)
    s.eval_prompts = tiny.prompts(4, seed=7)
    s.teacher_samples = teacher_completions(
        s.teacher, s.tokenizer, s.eval_prompts, max_new_tokens=4, batch_size=4, use_chat_template=True, seed=0
    )
    s.demo = DemoSettings(batch_size=4, max_new_tokens=4, bertscore=False)
    s.train_fn = _train
    return s


def _ran(r: dict) -> bool:
    return "s_per_step" in r


def test_speed_rows_run_or_say_why_not(shared, monkeypatch):
    monkeypatch.setenv("FDISTILL_VLLM_PYTHON", "/nonexistent/python")  # "auto" cannot start a server here
    rows = ("in-process", "k=2", "mu=2", "server")
    o = bench.parse_args([*SIZES, "--objective", "rkl", "tvd", "--rows", *rows])
    results = bench.speed_rows(o, shared)
    trl = importlib.util.find_spec("trl") is not None
    expected = {f"{obj} / {row}" for obj in ("rkl", "tvd") for row in rows}
    assert set(results) == expected | {f"{obj} / {t}" for obj in ("rkl", "tvd") for t in ("TRL", "TRL + vLLM")}
    for objective in ("rkl", "tvd"):
        r = results[f"{objective} / in-process"]
        assert _ran(r) and r["s_per_step"] > 0 and math.isfinite(r["loss"])
        assert 0 < r["mean_length"] <= 4 and 0 < r["generation_share"] <= 1  # the sampler was timed
        reuse = results[f"{objective} / k=2"]
        assert _ran(reuse) or "steps_per_generation" in reuse["unavailable"]
        again = results[f"{objective} / mu=2"]
        assert _ran(again) and again["s_per_step"] > 0 and math.isfinite(again["loss"])
        server = results[f"{objective} / server"]  # never run: a missing field, or no vLLM virtualenv
        assert "student_server" in server["unavailable"] or "/nonexistent/python" in server["unavailable"]
    assert "TVD" in results["tvd / TRL"]["unavailable"]
    assert "CUDA" in results["rkl / TRL + vLLM"]["unavailable"]  # this suite runs without CUDA
    assert _ran(results["rkl / TRL"]) if trl else "not installed" in results["rkl / TRL"]["unavailable"]
    table = bench.speed_table(o, results)
    assert "| rkl | in-process | " in table and "| 1.00 |" in table
    assert table.count("not available: ") == sum("unavailable" in r for r in results.values())


def test_quality_runs_are_paired_resumable_and_tabled(shared, tmp_path, monkeypatch):
    o = bench.parse_args(["--quality", "--quality-steps", "2", "--seeds", "0", "1", "--work", str(tmp_path)])
    o.rows = ["in-process", "k=2"]
    runs, skipped = bench.quality_runs(o, shared, "tvd")
    ran = [v for v in o.rows if v not in skipped]
    assert len(runs) == 2 * len(ran) and "in-process" in ran
    assert all(set(bench.QUALITY_KEYS) <= set(r["metrics"]) for r in runs)
    assert {r["seed"] for r in runs} == {0, 1} and all(r["s_per_step"] > 0 for r in runs)
    calls = []
    monkeypatch.setattr(shared, "train_fn", lambda *a, **k: calls.append(k))
    again, _ = bench.quality_runs(o, shared, "tvd")  # every (variant, seed) is on disk: nothing is trained again
    assert calls == [] and again == runs
    table = bench.quality_table(o, "tvd", runs, skipped)
    assert "| in-process |" in table
    for variant in skipped:
        assert f"| {variant} | not available: " in table
    paired = table.split("Paired per seed")[1]
    assert "| k=2 | " in paired if "k=2" in ran else "no variant ran beside in-process" in paired


def test_a_bad_out_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="--out"):
        bench.main(["--out", str(tmp_path / "missing" / "x.md"), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


def test_a_server_url_is_never_written():
    url = "http://user:secret@127.0.0.1:9/v1"
    o = bench.parse_args(["--student-server", url])
    cells = [bench._row_label("tvd", "overlap", url), bench._error(ConnectionError(f"{url} refused"), o)]
    assert all("secret" not in c and "URL" in c for c in cells)
    assert "auto" in bench._row_label("tvd", "server", "auto")


def test_the_quality_table_pairs_each_variant_with_in_process_by_seed():
    """Made-up scores: k=2 is consistently lower on r_llh_token (better), the rest equal (ties)."""
    o = bench.parse_args(["--quality", "--quality-steps", "4", "--seeds", "0", "1", "2"])
    o.rows = ["in-process", "k=2", "server"]
    runs = [
        {
            "variant": v,
            "seed": seed,
            "s_per_step": 1.0,
            "metrics": {k: 5.0 + seed - (d if k == "r_llh_token" else 0) for k in bench.QUALITY_KEYS},
        }
        for v, d in (("in-process", 0.0), ("k=2", 0.5))
        for seed in (0, 1, 2)
    ]
    table = bench.quality_table(o, "tvd", runs, {"server": "no vLLM here"})
    k2 = next(line for line in table.split("Paired per seed")[1].splitlines() if line.startswith("| k=2 |"))
    cells = k2.strip("|").split("|")[1:]
    assert "-0.5" in cells[0] and "better" in cells[0] and all("tie" in c for c in cells[1:])
    assert "| server | not available: no vLLM here |" in table


def test_repeats_alternate_the_rows_and_report_medians(shared, monkeypatch):
    """--repeats N runs every row N times, the order reversed every other repeat; a row reports its median repeat
    and the ratios are medians of per-repeat ratios."""
    order = []
    real = bench.run_fdistill_row

    def logged(o, shared_, objective, name):
        order.append(name)
        return real(o, shared_, objective, name)

    monkeypatch.setattr(bench, "run_fdistill_row", logged)
    o = bench.parse_args([*SIZES, "--objective", "rkl", "--rows", "in-process", "mu=2", "--no-trl", "--repeats", "3"])
    results = bench.speed_rows(o, shared)
    assert order == ["in-process", "mu=2", "mu=2", "in-process", "in-process", "mu=2"]
    for row in ("in-process", "mu=2"):
        r = results[f"rkl / {row}"]
        assert len(r["s_per_step_repeats"]) == 3 and r["s_per_step"] == sorted(r["s_per_step_repeats"])[1]
    base, again = (results[f"rkl / {row}"]["s_per_step_repeats"] for row in ("in-process", "mu=2"))
    expected = sorted(b / a for b, a in zip(base, again))[1]
    assert bench._speedup(results["rkl / in-process"], results["rkl / mu=2"]) == f"{expected:.2f}"
    assert "median of 3 repeats" in bench.speed_table(o, results)
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])


def test_a_row_that_fails_in_any_repeat_is_reported_as_failed():
    ok = {"s_per_step": 1.0}
    assert bench._median_run([ok, {"error": "boom"}, ok]) == {"error": "boom"}
    assert bench._median_run([{"s_per_step": 3.0}, {"s_per_step": 1.0}, {"s_per_step": 2.0}])["s_per_step"] == 2.0
    assert bench._median_run([ok]) == ok  # one repeat: as before, no repeat list
