"""Regenerate recipes/{dart,xsum,wmt16_en_ro,commonsense_dialogue}/ from one table (edit the table, re-run)."""

import os

R = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes")
TASKS = {
    "dart": dict(
        what="DART data-to-text (Nan et al. 2021) with a BART-large teacher, 3-encoder/1-decoder student (paper Table 2, DART).",
        base="facebook/bart-large",
        finetune=True,
        data="data/dart",
        split_eval="validation",
        prompt="prompt",
        ref="reference",
        prefix="",
        flatten=False,
        enc=[0, 6, 11],
        dec=[0],
        layers=None,
        prompt_len=256,
        new_tokens=128,
        bs=8,
        metrics=["bleu", "ter", "bertscore"],
        prep="python -m fdistill.cli.paper_data dart data/dart",
        chat=False,
        optim="adamw_torch",
        lr_ft=3e-5,
        lr=5e-5,
    ),
    "xsum": dict(
        what="XSum summarisation (Narayan et al. 2018) with the task-tuned BART-large-XSum teacher, 3+3-layer student (paper Table 2, XSum).",
        base="facebook/bart-large-xsum",
        finetune=False,
        data="EdinburghNLP/xsum",
        split_eval="validation",
        prompt="document",
        ref="summary",
        prefix="",
        flatten=False,
        enc=[0, 6, 11],
        dec=[0, 6, 11],
        layers=None,
        prompt_len=512,
        new_tokens=64,
        bs=8,
        metrics=["rouge"],
        prep=None,
        chat=False,
        optim="adamw_torch",
        lr_ft=None,
        lr=5e-5,
    ),
    "wmt16_en_ro": dict(
        what="WMT16 English→Romanian (Bojar et al. 2016) with a T5-base teacher on a 100K subset, 3-encoder/1-decoder student (paper Table 2, WMT16 EN-RO).",
        base="google-t5/t5-base",
        finetune=True,
        data="wmt/wmt16",
        data_config="ro-en",
        split_eval="validation",
        prompt="translation.en",
        ref="translation.ro",
        prefix="translate English to Romanian: ",
        flatten=True,
        enc=[0, 6, 11],
        dec=[0],
        layers=None,
        prompt_len=256,
        new_tokens=128,
        bs=8,
        metrics=["bleu", "chrf", "ter"],
        prep=None,
        chat=False,
        optim="adafactor",
        lr_ft=1e-3,
        lr=1e-3,
    ),
    "commonsense_dialogue": dict(
        what="Commonsense Dialogue (Zhou et al. 2021) with a DialoGPT-medium teacher, 4-layer student (paper Table 2, Commonsense Dialogue).",
        base="microsoft/DialoGPT-medium",
        finetune=True,
        data="data/commonsense_dialogue",
        split_eval="validation",
        prompt="prompt",
        ref="reference",
        prefix="",
        flatten=False,
        enc=None,
        dec=None,
        layers=[0, 8, 15, 23],
        prompt_len=256,
        new_tokens=64,
        bs=8,
        metrics=["bleu", "bertscore"],
        prep="python -m fdistill.cli.paper_data commonsense_dialogue data/commonsense_dialogue --source PATH/Commonsense-Dialogues/data",
        chat=False,
        optim="adamw_torch",
        lr_ft=5e-5,
        lr=5e-5,
    ),
}


def y(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '""' if v == "" else (f'"{v}"' if (":" in v or v.startswith(" ") or v[-1:] == " ") else v)
    if isinstance(v, list):
        return "[" + ", ".join(y(x) for x in v) + "]"
    return format(v, ".10f").rstrip("0") if isinstance(v, float) else str(v)


def write(path, header, items):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = [f"# {h}" if h else "#" for h in header] + [""]
    for k, v in items:
        if k.startswith("#"):
            lines.append(k)
            continue
        lines.append(f"{k}: {y(v)}")
    open(path, "w").write("\n".join(lines) + "\n")


for task, t in TASKS.items():
    d = f"{R}/{task}"
    run = f"runs/{task}"
    teacher = f"{run}/teacher" if t["finetune"] else t["base"]
    data_keys = [("train_data", t["data"])] + (
        [("train_data_config", t["data_config"])] if t.get("data_config") else []
    )
    data_common = (
        [("prompt_column", t["prompt"])]
        + ([("prompt_prefix", t["prefix"])] if t["prefix"] else [])
        + ([("flatten_data", True)] if t["flatten"] else [])
    )
    student = (
        [("student_encoder_layers", t["enc"]), ("student_decoder_layers", t["dec"])]
        if t["enc"]
        else [("student_layers", t["layers"])]
    )
    pre = [f"# Data first: {t['prep']}"] if t["prep"] else []
    train_common = [
        ("per_device_train_batch_size", t["bs"]),
        ("gradient_accumulation_steps", 1),
        ("optim", t["optim"]),
        ("max_prompt_length", t["prompt_len"]),
        ("max_target_length", t["new_tokens"]),
        ("max_new_tokens", t["new_tokens"]),
        ("logging_steps", 50),
        ("save_strategy", "epoch"),
        ("report_to", "none"),
        ("seed", 0),
    ]
    n = 0
    if t["finetune"]:
        write(
            f"{d}/0_finetune_teacher.yaml",
            [
                f"fdistill train recipes/{task}/0_finetune_teacher.yaml",
                f"Fine-tunes the teacher ({t['base']}) by MLE on the references: {t['what']}",
            ]
            + [p[2:] for p in pre],
            [("teacher", t["base"]), ("student", t["base"])]
            + data_keys
            + [("train_split", "train")]
            + data_common
            + [
                ("reference_column", t["ref"]),
                ("objective", "mle"),
                ("output_dir", f"{run}/teacher"),
                ("num_train_epochs", 3),
                ("learning_rate", t["lr_ft"]),
            ]
            + train_common,
        )
    sample_common = (
        [("teacher", teacher), ("data", t["data"])]
        + ([("data_config", t["data_config"])] if t.get("data_config") else [])
        + [("split", "train"), ("prompt_column", t["prompt"])]
        + ([("prompt_prefix", t["prefix"])] if t["prefix"] else [])
        + ([("flatten_data", True)] if t["flatten"] else [])
        + [("max_prompt_length", t["prompt_len"]), ("max_new_tokens", t["new_tokens"]), ("batch_size", 32), ("seed", 0)]
    )
    if task == "wmt16_en_ro":
        sample_common.append(("limit", 100000))  # the paper's 100K-sentence training subset (§3.1)
    write(
        f"{d}/1_sample.yaml",
        [
            f"accelerate launch -m fdistill.cli sample --config recipes/{task}/1_sample.yaml",
            "Offline teacher samples (f-DISTILL §2.3): one ancestral sample per training input, drawn once.",
        ],
        sample_common + [("decoding", "sample"), ("num_samples", 1), ("output", f"{run}/teacher_samples")],
    )
    write(
        f"{d}/1_sample_beam.yaml",
        [
            f"accelerate launch -m fdistill.cli sample --config recipes/{task}/1_sample_beam.yaml",
            "The teacher's beam-search outputs: the SeqKD baseline's targets (Kim & Rush 2016).",
        ],
        sample_common + [("decoding", "beam"), ("num_beams", 4), ("num_samples", 1), ("output", f"{run}/teacher_beam")],
    )
    distill_common = (
        [("teacher", teacher)]
        + student
        + [("train_data", f"{run}/teacher_samples"), ("eval_data", f"{run}/teacher_samples"), ("eval_split", "train")]
    )
    write(
        f"{d}/2_predistill.yaml",
        [
            f"accelerate launch -m fdistill.cli train recipes/{task}/2_predistill.yaml",
            "Pre-distillation (Shleifer & Rush 2020): CE on references + word-level KL + hidden-state MSE; warm-starts every run below.",
        ],
        [("teacher", teacher)]
        + student
        + [
            ("train_data", f"{run}/teacher_samples"),
            ("reference_column", t["ref"]),
            ("prompt_column", t["prompt"]),
            ("objective", "predistill"),
            ("predistill_alpha_mle", 0.8),
            ("predistill_alpha_kd", 0.2),
            ("predistill_alpha_hidden", 3.0),
            ("output_dir", f"{run}/predistill"),
            ("num_train_epochs", 28),
            ("learning_rate", t["lr"]),
        ]
        + train_common,
    )
    write(
        f"{d}/3_distill.yaml",
        [
            f"accelerate launch -m fdistill.cli train recipes/{task}/3_distill.yaml objective=tvd output_dir={run}/tvd",
            "f-DISTILL from the pre-distilled student; objective= kl | rkl | js | tvd | engine (same recipe, one run each; paper: 12 epochs).",
            "js_mixture=exact uses the exact JS decomposition of the paper's §7 (Eq. 12) instead of Eq. 11.",
        ],
        [
            ("teacher", teacher),
            ("student", f"{run}/predistill"),
            ("train_data", f"{run}/teacher_samples"),
            ("prompt_column", t["prompt"]),
            ("objective", "tvd"),
            ("js_mixture", "stepwise"),
            ("loss_reduction", "sequence"),
            ("student_do_sample", True),
            ("output_dir", f"{run}/tvd"),
            ("num_train_epochs", 12),
            ("learning_rate", t["lr"]),
        ]
        + train_common,
    )
    write(
        f"{d}/3_seqkd.yaml",
        [
            f"accelerate launch -m fdistill.cli train recipes/{task}/3_seqkd.yaml",
            "SeqKD baseline (Kim & Rush 2016): cross-entropy on the teacher's beam outputs, from the pre-distilled student.",
        ],
        [
            ("teacher", teacher),
            ("student", f"{run}/predistill"),
            ("train_data", f"{run}/teacher_beam"),
            ("prompt_column", t["prompt"]),
            ("objective", "seqkd"),
            ("output_dir", f"{run}/seqkd"),
            ("num_train_epochs", 12),
            ("learning_rate", t["lr"]),
        ]
        + train_common,
    )
    write(
        f"{d}/3_mle.yaml",
        [
            f"accelerate launch -m fdistill.cli train recipes/{task}/3_mle.yaml",
            "Non-distilled baseline: the student architecture trained by MLE on the references alone.",
        ],
        [("teacher", teacher)]
        + student
        + data_keys
        + [("train_split", "train")]
        + data_common
        + [
            ("reference_column", t["ref"]),
            ("objective", "mle"),
            ("output_dir", f"{run}/mle"),
            ("num_train_epochs", 28),
            ("learning_rate", t["lr"]),
        ]
        + train_common,
    )
    write(
        f"{d}/4_evaluate.yaml",
        [
            f"fdistill evaluate --config recipes/{task}/4_evaluate.yaml",
            f"Test-set metrics of the paper for this task ({', '.join(t['metrics'])}), risks R_llh / R_cvg and TeacherDist (Tables 2-3).",
        ],
        [
            ("teacher", teacher),
            ("include_teacher", True),
            ("teacher_dist", True),
            ("models", [f"{m}={run}/{m}" for m in ("mle", "predistill", "seqkd", "kl", "rkl", "js", "tvd", "engine")]),
            ("data", t["data"] if not t["prep"] else f"{t['data']}/test.jsonl"),
        ]
        + ([("data_config", t["data_config"])] if t.get("data_config") else [])
        + [
            ("split", "test" if not t["prep"] else "train"),
            ("prompt_column", t["prompt"]),
            ("reference_column", t["ref"]),
        ]
        + ([("prompt_prefix", t["prefix"])] if t["prefix"] else [])
        + ([("flatten_data", True)] if t["flatten"] else [])
        + [("max_new_tokens", t["new_tokens"]), ("metrics", t["metrics"]), ("output", f"{run}/evaluation")],
    )
