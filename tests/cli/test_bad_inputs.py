"""Every sub-command's worst inputs, in-process: one line on stderr naming the problem and the fix, exit status 2,
no traceback, and nothing written (issue 15). One row per input: (argv, expected fragment of the error)."""

import os

import pytest
import yaml

from fdistill import testing as tiny
from fdistill.cli import load_recipe, main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny saved teacher, a prompts file and a recipe that would train on them (never run here)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    teacher = root / "teacher"
    tiny.llama(1, seed=0).save_pretrained(teacher)
    tiny.tokenizer().save_pretrained(teacher)
    prompts = root / "prompts.jsonl"
    tiny.dataset(4, seed=0).to_json(str(prompts))
    recipe = root / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher),
                "train_data": str(prompts),
                "student_layers": [0],
                "objective": "kl",
                "output_dir": str(root / "never"),
                "use_cpu": True,
                "report_to": [],
            }
        )
    )
    (root / "no_teacher.yaml").write_text(
        yaml.safe_dump({"train_data": str(prompts), "output_dir": str(root / "never")})
    )
    (root / "typo.yaml").write_text(yaml.safe_dump({"teacher": str(teacher), "temprature": 0.7}))
    (root / "a_file").write_text("not a folder")
    (root / "empty.jsonl").write_text("")
    (root / "num.csv").write_text("prompt\n1\n2\n")
    (root / "blank.csv").write_text("prompt,reference\nthe cat,a\n,b\n")
    (root / "notes.txt").write_text("the cat\n")
    (root / "nulls.jsonl").write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c", "reference": null}\n')
    (root / "noref.jsonl").write_text('{"prompt": "a cat"}\n')
    (root / "emptydir").mkdir()
    (root / "blank_recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher),
                "train_data": str(root / "blank.csv"),
                "student_layers": [0],
                "objective": "tvd",
                "output_dir": str(root / "never"),
                "max_steps": 1,
                "use_cpu": True,
                "report_to": [],
            }
        )
    )
    return {"root": root, "teacher": str(teacher), "prompts": str(prompts), "recipe": str(recipe)}


def _rows():
    """(argv with {placeholders}, error fragment). Placeholders: root, teacher, prompts, recipe."""
    train = ["train", "{recipe}"]
    sample = ["sample", "--teacher", "{teacher}", "--data", "{prompts}", "--output", "{root}/never", "--no-progress"]
    evaluate = [
        "evaluate",
        "--data",
        "{prompts}",
        "--split",
        "train",
        "--models",
        "x=/nonexistent",
        "--output",
        "{root}/never",
    ]
    audio = ["vocoder", "audio", "recipes/vocoder/audio.yaml", "corpus=synthetic", "output_dir={root}/never"]
    gaussian = ["vocoder", "gaussian", "--out", "{root}/never"]
    glow = ["recipes/flows/digits_glow.yaml", "output_dir={root}/never"]
    return [
        # fdistill train: the recipe, its typed values and the training settings
        (["train", "{root}/missing.yaml"], "recipe '{root}/missing.yaml' not found"),
        (["train", "{root}"], "is a folder"),
        (["train", "{root}/no_teacher.yaml"], "lacks teacher"),
        (train + ["learnig_rate=1e-3"], "'learnig_rate': did you mean learning_rate?"),
        (train + ["learning_rate=[1,2]"], "learning_rate=[1, 2] is not valid: expected a number"),
        (train + ["use_chat_template=maybe"], "use_chat_template='maybe' is not valid: expected true or false"),
        (train + ["max_steps=2.5"], "max_steps=2.5 is not valid: expected a whole number"),
        (train + ["max_steps"], "override 'max_steps' is not key=value"),
        (train + ["loss_temperature=inf"], "loss_temperature=inf is not valid: use a finite number"),
        (train + ["predistill_alpha_kd=nan"], "predistill_alpha_kd=nan is not valid"),
        (
            train + ["objective=seqkd", "teacher_sampling=online"],
            "teacher_sampling='online' is not valid: objective 'seqkd'",
        ),
        (train + ["objective=klx"], "objective='klx' is not valid"),
        (train + ["on_nonfinite=ignore"], "on_nonfinite='ignore' is not valid"),
        (train + ["--resume-from-checkpoint", "latest"], "--resume-from-checkpoint latest: no checkpoint-N folder"),
        # settings transformers accepts but that cannot be meant (issue 22, item 6)
        (train + ["per_device_train_batch_size=0"], "per_device_train_batch_size=0 is not valid: use 1 or more"),
        (train + ["per_device_eval_batch_size=-1"], "per_device_eval_batch_size=-1 is not valid"),
        (
            train + ["objective=rkl", "per_device_train_batch_size=1000000000"],
            "per_device_train_batch_size=1000000000 cannot fit in memory: one batch's float32 logits",
        ),
        (train + ["gradient_accumulation_steps=0"], "gradient_accumulation_steps=0 is not valid"),
        (train + ["max_steps=0"], "max_steps=0 is not valid: use a positive number of optimizer steps, or -1"),
        (train + ["max_steps=-5"], "max_steps=-5 is not valid"),
        (train + ["num_train_epochs=0"], "num_train_epochs=0.0 is not valid"),
        (train + ["learning_rate=0"], "learning_rate=0.0 is not valid: use a finite positive learning rate"),
        (train + ["weight_decay=-1"], "weight_decay=-1.0 is not valid"),
        (train + ["max_grad_norm=nan"], "max_grad_norm=nan is not valid"),
        (train + ["adam_beta2=1"], "adam_beta2=1.0 is not valid: use a value in [0, 1)"),
        (train + ["save_steps=0"], "save_steps=0.0 is not valid"),
        (train + ["logging_steps=-1"], "logging_steps=-1.0 is not valid"),
        (train + ["eval_strategy=steps", "eval_steps=0"], "eval_steps=0.0 is not valid"),
        (train + ["save_total_limit=0"], "save_total_limit=0 is not valid"),
        (train + ["seed=-1"], "seed=-1 is not valid: use a whole number in [0, 2^32)"),
        (train + ["dataloader_num_workers=-2"], "dataloader_num_workers=-2 is not valid"),
        (train + ["label_smoothing_factor=0.1"], "fdistill's objectives do not use it"),
        (train + ["lr_scheduler_kwargs={foo: 1}"], "the 'linear' scheduler does not take ['foo']"),
        (
            train + ["lr_scheduler_type=cosine", "lr_scheduler_kwargs={num_cycle: 1}"],
            "the 'cosine' scheduler does not take ['num_cycle'] (it takes ['num_cycles', 'last_epoch'])",
        ),
        (
            train + ["lr_scheduler_type=constant", "lr_scheduler_kwargs={num_cycles: 1}"],
            "(it takes none: transformers would ignore them)",
        ),
        (train + ["push_to_hub=true"], "push_to_hub: uploading to the Hub is impossible offline"),
        (train + ["push_to_hub=true", "hub_model_id=a//b"], "the model repo id 'a//b' is not valid"),
        (train + ["--resume-from-checkpoint", "{root}/nowhere"], "is not a folder"),
        # --config files of sample / evaluate: the same parser
        (["sample", "--config", "{root}/missing.yaml"], "--config file '{root}/missing.yaml' not found"),
        (["sample", "--config", "{root}/typo.yaml"], "'temprature': did you mean temperature?"),
        (["sample", "--config"], "--config needs a value"),
        (["train", "{root}/blank_recipe.yaml"], "prompt column 'prompt', row 1: None is missing"),
        # fdistill sample: data, teacher, output and settings
        (sample + ["--data", "{root}/missing.jsonl"], "data '{root}/missing.jsonl' does not exist"),
        (sample + ["--data", "./data/missing"], "does not exist (looked for"),
        (sample + ["--data", "{root}/empty.jsonl"], "is empty (0 bytes)"),
        (sample + ["--data", "{root}/num.csv"], "row 0: 1 is a number, not text"),
        (sample + ["--data", "{root}/blank.csv"], "prompt column 'prompt', row 1: None is missing"),
        (sample + ["--data", "{root}/notes.txt"], "has the suffix '.txt'"),
        (sample + ["--data", "{root}/emptydir"], "doesn't contain any data files"),
        (sample + ["--data", "{teacher}"], "holds a model (config.json), not a dataset"),
        (sample + ["--teacher", "./no_teacher"], "model folder './no_teacher' does not exist"),
        (sample + ["--teacher", "{root}/emptydir"], "has no config.json"),
        (sample + ["--teacher", "{prompts}"], "is a file, not a model folder"),
        (sample + ["--output", "{root}/a_file"], "output='{root}/a_file' is not valid: it is an existing file"),
        (sample + ["--temperature", "inf"], "temperature=inf: use a finite positive temperature"),
        (sample + ["--top-p", "nan"], "top_p=nan"),
        (sample + ["--batch-size", "0"], "batch_size=0: use a positive number"),
        (sample + ["--prompt-column", "text"], "no column 'text'"),
        (sample + ["--dtype", "float8"], "dtype='float8' is not valid"),
        (sample + ["--limit", "-1"], "limit=-1 must be ≥ 1"),
        (sample + ["--topk-logprobs", "1000"], "topk_logprobs=1000: the teacher has only 25 tokens"),
        (sample + ["--batch-size", "1000000000"], "batch_size=1000000000 cannot fit in memory"),
        (sample + ["--push-to-hub", "a//b"], "--push-to-hub: the dataset repo id 'a//b' is not valid"),
        (sample + ["--push-to-hub", "me/data"], "--push-to-hub: uploading to the Hub is impossible offline"),
        # fdistill evaluate: settings, data and output before any model is loaded
        (evaluate + ["--batch-size", "0"], "batch_size=0 must be ≥ 1: give a whole number ≥ 1"),
        (evaluate + ["--max-new-tokens", "-1"], "max_new_tokens=-1 must be ≥ 1"),
        (evaluate + ["--metrics", "bleu", "meteor"], "unknown metric(s) ['meteor']"),
        (evaluate + ["--models", "a=x", "a=y"], "--models names 'a' twice"),
        (evaluate + ["--against-teacher"], "need --teacher"),
        (evaluate + ["--data", "{root}/nulls.jsonl"], "column 'reference'[1]=None is not valid"),
        (evaluate + ["--data", "{root}/noref.jsonl"], "nothing to compare"),
        (evaluate + ["--output", "{root}/a_file"], "output='{root}/a_file' is not valid: it is an existing file"),
        (["evaluate", "--combine", "{root}/a_file", "--output", "{root}/never"], "cannot be read: it is not JSON"),
        (
            evaluate[:-3] + ["x={teacher}", "--output", "{root}/never", "--max-new-tokens", "100000"],
            "model 'x' has 128 positions",
        ),
        # fdistill paper-claims and demo: counts and output folders
        (["paper-claims", "--out", "{root}/a_file"], "--out='{root}/a_file' is not valid: it is an existing file"),
        (["paper-claims", "--out", "{root}/never", "--steps", "0"], "--steps=0 must be ≥ 1"),
        (["paper-claims", "--out", "{root}/never", "--threads", "0"], "--threads=0 must be ≥ 1"),
        (["paper-claims", "--out", "{root}/never", "--seeds", "1", "1"], "seeds=[1, 1] is not valid"),
        (["paper-claims", "--out", "{root}/never", "--variants", "kl", "nope"], "variants=['nope'] is not valid"),
        (["demo", "--output", "{root}/a_file"], "output='{root}/a_file' is not valid: it is an existing file"),
        (["demo", "--output", "{root}/never", "--objective", "kl", "kl"], "a name repeats"),
        (["demo", "--export-data", "{root}/a_file"], "export_data='{root}/a_file' is not valid"),
        # fdistill vocoder
        (audio + ["hop=0"], "hop=0 must be ≥ 1"),
        (audio + ["batch_size=0"], "batch_size=0 must be ≥ 1"),
        (audio + ["sample_rate=abc"], "sample_rate='abc' is not valid"),
        (audio + ["teacher_steps=-5"], "teacher_steps=-5 must be ≥ 1"),
        (audio + ["learning_rate=[1,2]"], "learning_rate=[1, 2] is not valid"),
        (audio + ["methods=[]"], "methods=[] is not valid"),
        (audio + ["methods=[gan]"], "unknown methods ['gan']"),
        (audio + ["output_dir=README.md"], "it is an existing file"),
        (gaussian + ["--dims", "0"], "dims=[0] is not valid"),
        (gaussian + ["--repeats", "0"], "repeats=0 must be ≥ 1"),
        (gaussian + ["--lr", "nan"], "lr=nan is not a finite number"),
        # fdistill flows
        (["flows", "experiment", *glow, "teacher={levels: -1, depth: 2, hidden: 8}"], "teacher.levels=-1 must be ≥ 1"),
        (
            [
                "flows",
                "experiment",
                "recipes/flows/breast_cancer_maf.yaml",
                "output_dir={root}/never",
                "teacher={blocks: -1, hidden: 8}",
            ],
            "teacher.blocks=-1 must be ≥ 1",
        ),
        (["flows", "experiment", *glow, "learning_rate=[1,2]"], "learning_rate=[1, 2] is not valid"),
        (["flows", "experiment", *glow, "seeds=[]"], "seeds=[] must be a non-empty list"),
        (["flows", "experiment", *glow, "studnet_epochs=3"], "did you mean student_epochs"),
        (["flows", "distill", *glow, "--weights", "nll=abc"], "--weights item='nll=abc' is not valid"),
    ]


ROWS = _rows()


@pytest.mark.parametrize("argv, fragment", ROWS, ids=[" ".join(a[:2] + a[-1:]) for a, _ in ROWS])
def test_worst_input_is_one_clear_line_and_writes_nothing(files, argv, fragment, capsys):
    def fill(text: str) -> str:
        for key, value in files.items():
            text = text.replace("{" + key + "}", str(value))
        return text

    argv, fragment = [fill(a) for a in argv], fill(fragment)
    before = set(os.listdir(files["root"]))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert fragment in err and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]  # progress bars of datasets may come before
    assert len(errors) == 1 and err.strip().endswith(errors[0].strip()), err
    assert set(os.listdir(files["root"])) == before  # nothing written, no output folder made


def test_numbers_and_booleans_from_text_reach_the_config(files):
    """The recipe values YAML leaves as text (5e-5, 'false') arrive typed in FDistillConfig."""
    run_args, config = load_recipe(files["recipe"], ["learning_rate=5e-5", "use_chat_template=false", "max_steps=1e1"])
    assert config.learning_rate == 5e-5 and config.use_chat_template is False and config.max_steps == 10
    assert run_args.student_layers == [0]
