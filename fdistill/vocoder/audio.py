"""The audio experiment: train a Gaussian WaveNet teacher on offline espeak-ng speech, distil IAF students by
reverse KL (+ power loss), ClariNet's regularised KL (+ STFT loss), z-reconstruction, x-reconstruction (noise
injection) and oracle prediction, and evaluate them all the same way.

Per method it reports the teacher's log-likelihood of student samples next to that of held-out real speech (a
reverse-KL student can score *higher* than real speech while sounding worse — the paper's caveat), the
multi-resolution STFT and log-mel distances to the held-out speech with the same conditioning, band powers against
real speech (the "whispering" check: too little low-band power, too much high-band), and the real-time factor of
sequential teacher sampling vs parallel student sampling on the same machine; WAV files and a spectrogram figure.

Resumable: the teacher, the oracle rollouts and each student are stages of the shared runner
(`fdistill.runner.run_stage`: ``{stage}.safetensors`` for the tensors, ``{stage}.json`` for the settings and
records; nothing pickled is ever loaded) and a rerun with the same settings reuses them. Optimiser steps go through
the runner's guard (`fdistill.runner.StepGuard`): a step with a non-finite loss or gradient is skipped, and a stage
stops with an error as soon as more than half of its steps were skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch

from fdistill import checks
from fdistill.errors import InputError, invalid
from fdistill.runner import StepGuard, run_stage
from fdistill.torch_utils import seeded
from fdistill.yaml_config import load_dataclass_config

from .losses import clarinet_kl, distance, power_loss, reverse_kl, stft_magnitude_loss
from .speech import (
    RESOLUTIONS,
    LogMel,
    SpeechCorpus,
    band_powers_db,
    espeak_available,
    make_speech_corpus,
    multi_resolution_stft_distance,
    save_spectrograms,
    write_wav,
)
from .wavenet import GaussianWaveNet, IAFStudent

METHODS = ("reverse_kl", "clarinet", "z_rec", "x_rec", "oracle")


@dataclass
class AudioExperimentConfig:
    """Every key of ``recipes/vocoder/audio.yaml``."""

    sample_rate: int = field(default=8000, metadata={"help": "Hz, ≥ 8000 (the band-power check spans 0–4 kHz)"})
    n_fft: int = 256
    hop: int = 64
    n_mels: int = 40
    corpus: str = field(default="espeak", metadata={"help": "'espeak' (needs espeak-ng) or 'synthetic' (tests)"})
    segment: int = 2048  # training clip length in samples
    batch_size: int = 8
    learning_rate: float = 1e-3
    teacher_channels: int = 32
    teacher_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    teacher_steps: int = 1500
    student_flows: int = 3
    student_channels: int = 24
    student_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    student_steps: int = 600
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    power_weight: float = 1.0  # reverse KL's power loss
    stft_weight: float = 1.0  # ClariNet's STFT magnitude loss
    recon_distance: str = "l2"  # z-reconstruction and oracle prediction
    x_rec_distance: str = "l1"  # l1 gives sharper samples (paper Fig. 5)
    x_rec_noise: float = 0.5  # std of the noise added to T(x) (paper Fig. 5: N(0, 0.5))
    oracle_rollouts: int = 16  # teacher samples of `segment` samples each, drawn sequentially once
    eval_seconds: float = 1.0  # per held-out clip
    eval_clips: int = 3
    seed: int = 0
    output_dir: str = "runs/vocoder/audio"

    def __post_init__(self):
        """Every setting checked before anything is loaded, trained or written: one error naming value and fix."""
        for name in (
            "sample_rate",
            "n_fft",
            "hop",
            "n_mels",
            "segment",
            "batch_size",
            "teacher_channels",
            "teacher_steps",
            "student_flows",
            "student_channels",
            "student_steps",
            "oracle_rollouts",
            "eval_clips",
        ):
            checks.whole_number(name, getattr(self, name))
        checks.whole_number("seed", self.seed, low=0)
        if self.sample_rate < 8000:
            raise invalid(
                "sample_rate",
                self.sample_rate,
                "use 8000 Hz or more (the band-power check compares 0–1, 1–2 and 2–4 kHz).",
            )
        checks.number("learning_rate", self.learning_rate)
        checks.number("eval_seconds", self.eval_seconds)
        for name in ("power_weight", "stft_weight", "x_rec_noise"):
            checks.number(name, getattr(self, name), allow_low=True)
        checks.whole_numbers("teacher_dilations", self.teacher_dilations, example="[1, 2, 4, 8]")
        checks.whole_numbers("student_dilations", self.student_dilations, example="[1, 2, 4, 8]")
        checks.names("methods", self.methods, METHODS)
        checks.choice("corpus", self.corpus, ("espeak", "synthetic"))
        for name in ("recon_distance", "x_rec_distance"):
            checks.choice(name, getattr(self, name), ("l1", "l2"))
        if self.segment % self.hop:
            raise invalid(
                "segment",
                self.segment,
                f"must be a multiple of hop={self.hop} (e.g. {max(self.segment // self.hop, 1) * self.hop}).",
            )
        if self.n_fft // 2 >= self.segment:
            raise invalid(
                "n_fft",
                self.n_fft,
                f"must be under 2 × segment={self.segment} (the STFT pads n_fft/2 "
                "samples by reflection); lower n_fft or raise segment.",
            )
        if self.n_mels > self.n_fft // 2:
            raise invalid(
                "n_mels",
                self.n_mels,
                f"use at most n_fft/2 = {self.n_fft // 2} mel bands (more leave bands without an STFT bin).",
            )
        window = max(n for n, _ in RESOLUTIONS)
        if self.evaluation_length() < window:
            raise invalid(
                "eval_seconds",
                self.eval_seconds,
                f"evaluation clips need at least {window} samples (the "
                f"largest STFT window of the MR-STFT distance) at sample_rate={self.sample_rate}; raise "
                "eval_seconds.",
            )
        checks.output_folder("output_dir", self.output_dir)
        if self.corpus == "espeak" and not espeak_available():
            raise InputError("corpus=espeak needs espeak-ng: `apt-get install espeak-ng` (or corpus=synthetic)")

    def evaluation_length(self) -> int:
        """Samples per held-out evaluation clip: ``eval_seconds`` rounded down to whole hops."""
        return int(self.eval_seconds * self.sample_rate) // self.hop * self.hop


def synthetic_corpus(
    sample_rate: int, seconds: float = 1.0, utterances: int = 12, held_out: int = 3, seed: int = 0
) -> SpeechCorpus:
    """Voiced-speech-like test signals (harmonics of a gliding f0 under two formant bumps, with pauses)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    clips = []
    for _ in range(utterances):
        f0 = 100 + 80 * torch.rand(1, generator=g) + 30 * torch.sin(2 * math.pi * 0.7 * t)
        phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
        formants = 300 + 2000 * torch.rand(2, generator=g)
        audio = sum(
            torch.sin(k * phase) * sum(torch.exp(-(((k * f0 - f) / 250) ** 2)) for f in formants) / k
            for k in range(1, 20)
        )
        gate = (torch.sin(2 * math.pi * 1.5 * t + 6 * torch.rand(1, generator=g)) > -0.3).float()
        audio = audio * gate + 0.003 * torch.randn(len(t), generator=g)
        clips.append((0.9 * audio / audio.abs().max()).float())
    return SpeechCorpus(clips[:-held_out], clips[-held_out:], sample_rate)


def load_corpus(config: AudioExperimentConfig) -> SpeechCorpus:
    if config.corpus == "synthetic":
        return synthetic_corpus(config.sample_rate, seed=config.seed)
    return make_speech_corpus(config.sample_rate)


def random_segments(clips: list[torch.Tensor], batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, length]`` random crops of random clips (zero-padded when a clip is shorter)."""
    out = torch.zeros(batch, length)
    for i in range(batch):
        clip = clips[int(torch.randint(len(clips), (1,), generator=generator))]
        start = int(torch.randint(max(len(clip) - length, 0) + 1, (1,), generator=generator))
        piece = clip[start : start + length]
        out[i, : len(piece)] = piece
    return out


def student_objective(
    method: str,
    student: IAFStudent,
    teacher: GaussianWaveNet,
    real: torch.Tensor,
    mel: torch.Tensor,
    config: AudioExperimentConfig,
    generator: torch.Generator,
    rollout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One method's loss on a batch of real clips ``real`` (``[B, T]``) and their log-mels."""
    if method == "oracle":
        z, target = rollout
        return distance(student(z, mel)[0], target, config.recon_distance)
    if method == "x_rec":
        with torch.no_grad():
            z = teacher.encode(real, mel)
            z = z + config.x_rec_noise * torch.randn(z.shape, generator=generator)
        return distance(student(z, mel)[0], real, config.x_rec_distance)
    z = torch.randn(real.shape, generator=generator)
    x, mean, log_std = student(z, mel)
    if method == "z_rec":
        return distance(teacher.encode(x, mel), z, config.recon_distance)
    t_mean, t_log_std = teacher.conditionals(x, mel)  # teacher conditionals on the student's own past
    if method == "reverse_kl":
        return reverse_kl(z, log_std, x, t_mean, t_log_std) + config.power_weight * power_loss(x, real)
    if method == "clarinet":
        return clarinet_kl(mean, log_std, t_mean, t_log_std) + config.stft_weight * stft_magnitude_loss(x, real)
    raise InputError(f"unknown method {method!r}; choose from {METHODS}")


TEACHER_SETTINGS = (
    "sample_rate",
    "n_fft",
    "hop",
    "n_mels",
    "corpus",
    "segment",
    "batch_size",
    "learning_rate",
    "teacher_channels",
    "teacher_dilations",
    "teacher_steps",
    "seed",
)
STUDENT_SETTINGS = TEACHER_SETTINGS + ("student_flows", "student_channels", "student_dilations", "student_steps")
METHOD_SETTINGS = {
    "reverse_kl": ("power_weight",),
    "clarinet": ("stft_weight",),
    "z_rec": ("recon_distance",),
    "x_rec": ("x_rec_distance", "x_rec_noise"),
    "oracle": ("recon_distance", "oracle_rollouts"),
}


def _settings(config: AudioExperimentConfig, keys) -> dict:
    return {k: getattr(config, k) for k in keys}


def _guard(stage: str, steps: int, config: AudioExperimentConfig) -> StepGuard:
    """The stage's step guard: it stops the stage once more than half of its ``steps`` optimiser steps had a
    non-finite loss or gradient (it would save an untrained model as finished)."""
    return StepGuard(
        stage,
        planned=steps,
        error=InputError,
        message="{stage}: {skipped} of {total} optimiser steps had a non-finite loss or gradient and "
        "were skipped, so it cannot train; likely cause: {hint}",
        hint=f"learning_rate={config.learning_rate!r} too high, or non-finite audio. Lower learning_rate "
        "(or check the corpus) and run again; nothing of this stage was saved.",
    )


def train_teacher(config, corpus, logmel, log=print) -> tuple[GaussianWaveNet, dict]:
    settings = _settings(config, TEACHER_SETTINGS)
    with seeded(config.seed):  # the initial weights; the caller's RNG is left as it was
        teacher = GaussianWaveNet(config.n_mels, config.hop, config.teacher_channels, tuple(config.teacher_dilations))

    def work():
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=config.learning_rate)
        guard, start, history = _guard("teacher", config.teacher_steps, config), time.perf_counter(), []
        for step in range(config.teacher_steps):
            real = random_segments(corpus.train, config.batch_size, config.segment, generator)
            nll = -teacher.log_prob(real, logmel(real)).mean() / config.segment
            if not guard.step(optimizer, nll, teacher.parameters(), max_grad_norm=10.0):
                continue
            history.append(nll.item())
            if step % 100 == 0 or step == config.teacher_steps - 1:
                log(f"teacher step {step}: NLL {nll.item():.3f} nats/sample")
        record = {
            "train_seconds": time.perf_counter() - start,
            "skipped_steps": guard.skipped,
            "final_train_nll": sum(history[-50:]) / max(len(history[-50:]), 1),
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "receptive_field": teacher.receptive_field,
        }
        return teacher.state_dict(), record, {"history": history}

    stage = run_stage(config.output_dir, "teacher", settings, work, log=None)
    if stage.resumed:
        teacher.load_state_dict(stage.tensors)
        log("teacher: reusing " + os.path.join(config.output_dir, "teacher"))
    return teacher.eval(), stage.record


def teacher_rollouts(config, corpus, logmel, teacher, log=print) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, T⁻¹(z), mel) for oracle prediction: sequential teacher samples conditioned on training mels."""

    def work():
        generator = torch.Generator().manual_seed(config.seed + 1)
        real = random_segments(corpus.train, config.oracle_rollouts, config.segment, generator)
        mel = logmel(real)
        start = time.perf_counter()
        audio, z, _ = teacher.sample(mel, config.segment, generator=generator)
        log(
            f"oracle rollouts: {config.oracle_rollouts} × {config.segment} samples in "
            f"{time.perf_counter() - start:.0f} s"
        )
        checks.finite_rows(f"oracle rollouts of the teacher in {config.output_dir}", audio)
        return {"z": z, "audio": audio, "mel": mel}, {}

    settings = _settings(config, TEACHER_SETTINGS + ("oracle_rollouts",))
    stage = run_stage(config.output_dir, "oracle_rollouts", settings, work, log=None)
    return stage.tensors["z"], stage.tensors["audio"], stage.tensors["mel"]


def train_student(config, corpus, logmel, teacher, method, rollouts=None, log=print) -> tuple[IAFStudent, dict]:
    with seeded(config.seed + 1000):
        student = IAFStudent(
            config.n_mels, config.hop, config.student_flows, config.student_channels, tuple(config.student_dilations)
        )

    def work():
        teacher.requires_grad_(False)
        generator = torch.Generator().manual_seed(config.seed + 2)
        optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
        guard, start, history = _guard(f"student {method}", config.student_steps, config), time.perf_counter(), []
        for step in range(config.student_steps):
            real = random_segments(corpus.train, config.batch_size, config.segment, generator)
            mel, rollout = logmel(real), None
            if method == "oracle":
                index = torch.randint(len(rollouts[0]), (config.batch_size,), generator=generator)
                rollout, mel = (rollouts[0][index], rollouts[1][index]), rollouts[2][index]
            loss = student_objective(method, student, teacher, real, mel, config, generator, rollout)
            if not guard.step(optimizer, loss, student.parameters(), max_grad_norm=10.0):
                continue  # counted, reported, never hidden; more than half: an error
            history.append(loss.item())
            if step % 100 == 0 or step == config.student_steps - 1:
                log(f"{method} step {step}: loss {loss.item():.4f}")
        record = {
            "train_seconds": time.perf_counter() - start,
            "skipped_steps": guard.skipped,
            "final_loss": sum(history[-50:]) / max(len(history[-50:]), 1),
            "parameters": sum(p.numel() for p in student.parameters()),
        }
        return student.state_dict(), record, {"history": history}

    settings = _settings(config, STUDENT_SETTINGS + METHOD_SETTINGS[method])
    stage = run_stage(config.output_dir, f"student_{method}", settings, work, log=None)
    if stage.resumed:
        student.load_state_dict(stage.tensors)
        log(f"{method}: reusing " + os.path.join(config.output_dir, f"student_{method}"))
    return student.eval(), stage.record


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@torch.no_grad()
def evaluate(config, corpus, logmel, teacher, students: dict, log=print) -> dict:
    """Per model: teacher log-likelihood (nats/sample), MR-STFT and log-mel distances, band powers, RTF."""
    length = config.evaluation_length()
    clips = [c[:length] for c in corpus.held_out[: config.eval_clips]]
    real = torch.stack([torch.nn.functional.pad(c, (0, length - len(c))) for c in clips])
    mel = logmel(real)
    generator = torch.Generator().manual_seed(config.seed + 3)
    seconds = real.numel() / config.sample_rate
    teacher_audio, teacher_time = _timed(lambda: teacher.sample(mel, length, generator=generator)[0])
    outputs = {"real speech": (real, None), "teacher": (teacher_audio, teacher_time)}
    for name, student in students.items():
        outputs[name] = _timed(lambda s=student: s.sample(mel, length, generator=generator))
    real_bands = band_powers_db(real, config.sample_rate)
    results = {}
    for name, (audio, elapsed) in outputs.items():
        results[name] = {
            "teacher_loglik_per_sample": float(teacher.log_prob(audio, mel).mean() / length),
            "mr_stft_distance": float(multi_resolution_stft_distance(audio, real)),
            "log_mel_l1": float((logmel(audio) - mel).abs().mean()),
            "band_power_db": band_powers_db(audio, config.sample_rate),
            "band_power_minus_real_db": [b - r for b, r in zip(band_powers_db(audio, config.sample_rate), real_bands)],
            "real_time_factor": None if elapsed is None else elapsed / seconds,
        }
        base = os.path.join(config.output_dir, "wav", name.replace(" ", "_"))
        os.makedirs(os.path.dirname(base), exist_ok=True)
        write_wav(base + ".wav", audio[0], config.sample_rate)
    save_spectrograms(
        {name: audio[0] for name, (audio, _) in outputs.items()},
        config.sample_rate,
        os.path.join(config.output_dir, "spectrograms.png"),
    )
    return results


def table(results: dict) -> str:
    lines = [
        "| model | teacher log-lik / sample ↑? | MR-STFT distance ↓ | log-mel L1 ↓ | band power − real, dB "
        "(0–1 / 1–2 / 2–4 kHz) | real-time factor ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rtf = "—" if r["real_time_factor"] is None else f"{r['real_time_factor']:.3g}"
        bands = " / ".join(f"{b:+.1f}" for b in r["band_power_minus_real_db"])
        lines.append(
            f"| {name} | {r['teacher_loglik_per_sample']:.3f} | {r['mr_stft_distance']:.3f} | "
            f"{r['log_mel_l1']:.3f} | {bands} | {rtf} |"
        )
    return "\n".join(lines) + "\n"


def load_audio_config(path: str | None = None, overrides: list[str] | None = None) -> AudioExperimentConfig:
    """The audio experiment's settings from a YAML recipe ``path`` and ``key=value`` ``overrides``, checked."""
    return load_dataclass_config(AudioExperimentConfig, path, overrides)


def run_audio_experiment(config: AudioExperimentConfig, log=print) -> dict:
    """Run (or resume) the audio experiment; writes summary.json, table.md, wav/ and spectrograms.png."""
    start = time.perf_counter()
    corpus = load_corpus(config)
    for part in ("train", "held_out"):
        for i, clip in enumerate(getattr(corpus, part)):
            checks.finite_rows(f"{config.corpus} corpus {part} clip {i}", clip)
    os.makedirs(config.output_dir, exist_ok=True)
    log(
        f"corpus: {config.corpus}, {corpus.seconds('train'):.1f} s train / {corpus.seconds('held_out'):.1f} s "
        f"held out at {config.sample_rate} Hz"
    )
    logmel = LogMel(config.sample_rate, config.n_fft, config.hop, config.n_mels)
    teacher, teacher_record = train_teacher(config, corpus, logmel, log)
    rollouts = teacher_rollouts(config, corpus, logmel, teacher, log) if "oracle" in config.methods else None
    students, records = {}, {}
    for method in config.methods:
        students[method], records[method] = train_student(config, corpus, logmel, teacher, method, rollouts, log)
    results = evaluate(config, corpus, logmel, teacher, students, log)
    summary = {
        "config": dataclasses.asdict(config),
        "teacher": teacher_record,
        "students": records,
        "evaluation": results,
        "table": table(results),
        "corpus_seconds": {"train": corpus.seconds("train"), "held_out": corpus.seconds("held_out")},
        "wall_seconds_this_run": time.perf_counter() - start,
    }
    with open(os.path.join(config.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(config.output_dir, "table.md"), "w") as f:
        f.write(summary["table"])
    log(summary["table"])
    return summary
