"""`fdistill vocoder …`: probability density distillation experiments. One sub-command per experiment; each adds
its own parser in `add_arguments` and its runner in `COMMANDS`.

    fdistill vocoder gaussian --out docs/vocoder/gaussian               # the paper's Gaussian study (§3, §4.1.1)
    fdistill vocoder gaussian --out /tmp/g --dims 4 16 --steps 500 --seed 1
    fdistill vocoder gaussian --out docs/vocoder/gaussian_paper --parameterisation paper  # the paper's x = μ + Rz
    fdistill vocoder audio recipes/vocoder/audio.yaml student_steps=100    # the audio experiment
"""

from __future__ import annotations

import torch


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="vocoder_command", required=True)
    g = sub.add_parser(
        "gaussian",
        help="the paper's Gaussian study: reverse KL vs z-/x-reconstruction, the expansion "
        "signal (Figs. 2–3) and Proposition 1; writes figures, table.md, summary.json",
    )
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--dims", type=int, nargs="+", default=[4, 16, 32, 64], help="dimensions D of the Gaussians")
    g.add_argument("--steps", type=int, default=5000, help="Adam updates per student (paper: 5000)")
    g.add_argument("--batch", type=int, default=64, help="minibatch size (paper: 64)")
    g.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (paper: 0.005)")
    g.add_argument("--repeats", type=int, default=8, help="reverse-KL runs behind Figure 3 (paper: 8)")
    g.add_argument("--samples", type=int, default=128, help="expansion-signal probes per update and run (paper: 128)")
    g.add_argument("--eval-samples", type=int, default=1000, help="samples per Figure 2 histogram (paper: 1000)")
    g.add_argument("--prop1-samples", type=int, default=200_000, help="Monte Carlo draws for Proposition 1")
    g.add_argument("--distance", choices=["l2", "l1"], default="l2", help="d of the reconstruction losses")
    g.add_argument(
        "--parameterisation",
        choices=["triangular", "paper"],
        default="triangular",
        help="maps of teacher and student: triangular (teacher μ + chol(RRᵀ)z, IAF student; default) or paper "
        "(teacher μ + Rz with T(x) = R⁻¹(x − μ), full-matrix student, the paper's literal §3.2)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny matrices: one is fastest)")

    a = sub.add_parser(
        "audio",
        help="Gaussian WaveNet teacher on espeak-ng speech → IAF students by reverse KL, "
        "ClariNet, z-/x-reconstruction, oracle; metrics, WAVs, spectrograms",
    )
    a.add_argument(
        "recipe", help="experiment YAML (keys: AudioExperimentConfig fields), e.g. recipes/vocoder/audio.yaml"
    )
    a.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe, e.g. student_steps=100")


def run_audio(args) -> None:
    from .audio import load_audio_config, run_audio_experiment

    run_audio_experiment(load_audio_config(args.recipe, args.overrides))


def run_gaussian(args) -> None:
    from fdistill.checks import whole_number

    from .gaussian import run_gaussian_study, study_table

    torch.set_num_threads(whole_number("--threads", args.threads))
    summary = run_gaussian_study(
        args.out,
        dims=tuple(args.dims),
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        repeats=args.repeats,
        samples=args.samples,
        seed=args.seed,
        eval_samples=args.eval_samples,
        distance=args.distance,
        prop1_samples=args.prop1_samples,
        parameterisation=args.parameterisation,
    )
    print(study_table(summary))
    print(f"trends: {summary['trends']}")
    print(f"wrote {args.out}/summary.json, table.md and figures in {summary['wall_seconds']:.0f} s")


COMMANDS = {"gaussian": run_gaussian, "audio": run_audio}


def run(args) -> None:
    COMMANDS[args.vocoder_command](args)
