"""One refusal per wing of the `fdistill` command: bad input is one line on stderr, the error first, and exit status 2.

Each input is refused before any work (no model, data set or teacher is loaded), so the tests are fast.
"""

import pytest
import torch

from fdistill.cli import main


def refused(argv: list[str], capsys) -> str:
    """Run ``fdistill ARGV``; check it exits with status 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    return err.strip()


def test_train_refuses_a_recipe_without_models_and_data(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("objective: js\n")
    line = refused(["train", str(recipe)], capsys)
    assert line.startswith(f"fdistill train: error: recipe {str(recipe)!r} lacks teacher, train_data, output_dir")


def test_sample_refuses_a_missing_output(tmp_path, capsys):
    line = refused(["sample", "--teacher", "gpt2", "--data", str(tmp_path / "prompts.jsonl")], capsys)
    assert line.startswith("fdistill sample: error: missing --output")


def test_evaluate_refuses_nothing_to_evaluate(tmp_path, capsys):
    argv = ["evaluate", "--output", str(tmp_path / "out"), "--data", str(tmp_path / "test.jsonl")]
    assert refused(argv, capsys).startswith("fdistill evaluate: error: nothing to evaluate")


def test_flows_refuses_a_missing_recipe(tmp_path, capsys):
    line = refused(["flows", "experiment", str(tmp_path / "missing.yaml")], capsys)
    assert line.startswith("fdistill flows: error: recipe") and "not found" in line


def test_vocoder_refuses_zero_threads(tmp_path, capsys):
    line = refused(["vocoder", "gaussian", "--out", str(tmp_path / "out"), "--threads", "0"], capsys)
    assert line.startswith("fdistill vocoder: error: --threads=0")


def test_diffusion_refuses_a_missing_recipe(tmp_path, capsys):
    line = refused(["diffusion", "experiment", str(tmp_path / "missing.yaml")], capsys)
    assert line.startswith("fdistill diffusion: error: recipe") and "not found" in line


def test_paper_claims_refuses_zero_steps(tmp_path, capsys):
    line = refused(["paper-claims", "--out", str(tmp_path / "out"), "--steps", "0"], capsys)
    assert line.startswith("fdistill paper-claims: error: --steps=0")


def test_demo_refuses_an_unknown_objective(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the demo sets it before its checks
    line = refused(["demo", "--output", str(tmp_path / "out"), "--objective", "nope"], capsys)
    assert line.startswith("fdistill demo: error: objectives=['nope'] is not valid")
