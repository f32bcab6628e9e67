"""Record every logged loss and metric of a tiny-run matrix, to check that a refactor changed no number.

The matrix (issue 23): every registered objective × a decoder-only (Llama) and an encoder–decoder (BART) student,
both JS mixtures, the fused path for each f-divergence, training from stored top-k columns in both tail modes, and
one tiny run of each research module (flows, the Gaussian vocoder study, the audio vocoder, diffusion). A refactor
keeps the floating-point operations and RNG draws in the same order, so the records must be *equal*, not close.

    python scripts/bit_identity.py --out before.json            # on the old code
    python scripts/bit_identity.py --out after.json             # on the new code
    python scripts/bit_identity.py --compare before.json after.json

``--only lm,flows,vocoder,diffusion`` runs a part. Runs use one thread, so a machine's thread count cannot change a
sum's order between the two recordings. Timings, paths and versions are dropped from the records.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

PARTS = ("lm", "flows", "vocoder", "diffusion")
VOLATILE = {  # timings, paths and throughputs: they differ between two runs of the same code
    "cpu_seconds",
    "wall_seconds",
    "wall_seconds_this_run",
    "train_seconds",
    "train_runtime",
    "total_flos",
    "train_samples_per_second",
    "train_steps_per_second",
    "samples_per_second",
    "samples_per_s",
    "samples_per_s_std",
    "real_time_factor",
    "output_dir",
    "plots",
}
SPEED_COLUMNS = ("samples/s", "samples_per_s", "real-time factor")
_TMP = [""]
DROPPED: set[str] = set()  # the keys left out, printed so that no number hides behind a volatile-looking name


def _clean_text(text: str) -> str:
    """A table or report without its speed columns, and with the run's temporary folder written as <TMP>."""
    if _TMP[0]:
        text = text.replace(_TMP[0], "<TMP>")
    lines, drop = [], []
    for line in text.splitlines():
        cells = line.split("|")
        if line.startswith("|") and any(c in line for c in SPEED_COLUMNS):
            drop = [i for i, c in enumerate(cells) if any(s in c for s in SPEED_COLUMNS)]
        elif not line.startswith("|"):
            drop = []
        lines.append("|".join(c for i, c in enumerate(cells) if i not in drop) if drop else line)
    return "\n".join(lines)


def _clean(value):
    """A JSON-able copy of ``value`` without timing/path/version entries; floats kept exactly (as repr strings)."""
    if isinstance(value, dict):
        volatile = {k for k in value if k in VOLATILE or "version" in str(k) or "path" in str(k)}
        DROPPED.update(map(str, volatile))
        return {k: _clean(v) for k, v in value.items() if k not in volatile}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, (int, bool)) or value is None:
        return value
    return repr(value)


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lm_runs(tmp: str) -> dict:
    import transformers

    from fdistill import FDistillTrainer
    from fdistill import testing as tiny
    from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline

    transformers.logging.set_verbosity_error()
    tok = tiny.tokenizer()
    runs: dict = {}

    def train(name, arch, teacher, data, **kw):
        student = getattr(tiny, arch)(1, seed=1)
        settings = dict(max_new_tokens=6, per_device_train_batch_size=4, max_steps=3, lr_scheduler_type="constant")
        args = tiny.config(os.path.join(tmp, name), **{**settings, **kw})
        trainer = FDistillTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
        )
        trainer.train()
        runs[name] = {"log": _clean(trainer.state.log_history), "weights": _weights_digest(student)}
        print(f"lm {name}: done", flush=True)

    for arch in ("llama", "bart"):
        teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
        data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok, max_new_tokens=6)
        for objective in ("kl", "rkl", "js", "tvd", "engine", "seqkd", "mle", "predistill"):
            train(f"{arch}-{objective}", arch, teacher, data, objective=objective)
        train(f"{arch}-js-exact", arch, teacher, data, objective="js", js_mixture="exact")
        for objective in ("kl", "rkl", "js", "tvd"):
            train(
                f"{arch}-{objective}-fused",
                arch,
                teacher,
                data,
                objective=objective,
                fused_divergence=True,
                fused_chunk_size=7,
            )
        train(f"{arch}-tvd-temperature", arch, teacher, data, objective="tvd", loss_temperature=2.0)
    teacher = tiny.llama(2, seed=0, init=0.15)
    settings = OfflineSamplingSettings(max_new_tokens=6, batch_size=4, topk_logprobs=3)
    top3 = sample_offline(
        teacher,
        tok,
        tiny.dataset(8, seed=3),
        os.path.join(tmp, "top3"),
        settings,
        teacher_id="tiny",
        show_progress=False,
    )
    runs["top3-samples"] = _clean(top3.to_list())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a renamed setting's old name still works
        for mode in ("tail", "renormalised"):
            train(
                f"llama-kl-top3-{mode}",
                "llama",
                None,
                top3,
                objective="kl",
                teacher_topk_logprobs=True,
                teacher_topk_mode=mode,
            )
    return runs


def flows_runs(tmp: str) -> dict:
    from fdistill.flows.experiment import load_experiment_config, run_experiment

    tiny = [
        "teacher={levels: 3, depth: 2, hidden: 8}",
        "student={levels: 3, depth: 1, hidden: 8}",
        "teacher_epochs=1",
        "student_epochs=1",
        "skd_warmup_epochs=0",
        "seeds=[0]",
        "num_samples=64",
        "bootstrap_rounds=5",
        "feature_epochs=1",
        "batch_size=256",
    ]
    config = load_experiment_config("recipes/flows/digits_glow.yaml", tiny + [f"output_dir={tmp}/flows"])
    return {"digits_glow": _clean(run_experiment(config, log=lambda *_: None))}


def vocoder_runs(tmp: str) -> dict:
    from fdistill.vocoder.audio import load_audio_config, run_audio_experiment
    from fdistill.vocoder.gaussian import run_gaussian_study

    out = {}
    for param in ("triangular", "paper"):
        study = dict(dims=(3, 5), steps=40, repeats=2, samples=8, eval_samples=60, prop1_samples=600, seed=4)
        summary = run_gaussian_study(f"{tmp}/gauss_{param}", parameterisation=param, log=lambda *_: None, **study)
        out[f"gaussian-{param}"] = _clean(summary)
        out[f"gaussian-{param}-table"] = _clean_text(open(f"{tmp}/gauss_{param}/table.md").read())
    tiny = [
        "corpus=synthetic",
        "teacher_steps=20",
        "student_steps=8",
        "segment=512",
        "batch_size=4",
        "oracle_rollouts=4",
        "eval_seconds=0.25",
        "eval_clips=2",
        "teacher_channels=8",
        "student_channels=8",
        "teacher_dilations=[1, 2, 4, 8]",
        "student_dilations=[1, 2]",
        "student_flows=2",
    ]
    config = load_audio_config("recipes/vocoder/audio.yaml", tiny + [f"output_dir={tmp}/audio"])
    out["audio"] = _clean(run_audio_experiment(config, log=lambda *_: None))
    return out


def diffusion_runs(tmp: str) -> dict:
    from fdistill.diffusion import experiment as ex

    tiny = [
        "student_classes=unconditional",
        "teacher_steps=40",
        "kd_steps=4",
        "num_pairs=24",
        "pairs_shard_size=10",
        "pd_start_steps=4",
        "pd_steps_per_round=3",
        "vsd_steps=3",
        "guidance_steps=3",
        "eval_steps=[4,2,1]",
        "num_eval_samples=40",
        "seeds=[0]",
        "kd_teacher_steps=4",
        "batch_size=16",
        "hidden=16",
        "depth=1",
        "toy_train_size=64",
    ]
    config = ex.load_experiment_config(None, [f"output_dir={tmp}/diffusion", *tiny])
    summary = ex.run_experiment(config, log=lambda *_: None)
    out = {"toy": _clean(summary)}
    out["toy-results.json"] = _clean(json.load(open(os.path.join(tmp, "diffusion", "results.json"))))
    out["toy-table.md"] = _clean_text(open(os.path.join(tmp, "diffusion", "table.md")).read())
    return out


def record(parts) -> dict:
    torch.set_num_threads(1)
    runners = {"lm": lm_runs, "flows": flows_runs, "vocoder": vocoder_runs, "diffusion": diffusion_runs}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        _TMP[0] = tmp
        for part in parts:
            result[part] = runners[part](os.path.join(tmp, part))
            print(f"{part}: recorded", flush=True)
    print(f"keys left out as timings, paths or versions: {sorted(DROPPED)}")
    return result


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in the first" for k in a.keys() - b.keys()]
        out += [f"{path}/{k}: only in the second" for k in b.keys() - a.keys()]
        for k in sorted(a.keys() & b.keys(), key=str):
            out += _diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]!r} != {str(b)[:80]!r}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the records of this code here (JSON)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two recordings")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.load(open(p)) for p in args.compare)
        common = before.keys() & after.keys()
        diffs = _diff({k: before[k] for k in common}, {k: after[k] for k in common})
        counted = sum(len(before[p]) for p in common)
        print(f"compared parts {sorted(common)} ({counted} runs): {len(diffs)} differences")
        for d in diffs[:40]:
            print(" ", d)
        return 1 if diffs else 0
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown or not args.out:
        parser.error(f"--out FILE is required and parts are {PARTS} (got {sorted(unknown)})")
    result = record(parts)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
