"""fdistill.vocoder audio part: spectral features, the AR teacher's sampler vs teacher forcing, the IAF student's
invertibility and log-determinant, the losses at equality, and the experiment end to end on a synthetic corpus."""

import json
import math
import os

import pytest
import torch

from fdistill.vocoder.audio import load_audio_config, run_audio_experiment, synthetic_corpus
from fdistill.vocoder.losses import (
    clarinet_kl,
    distance,
    power_loss,
    reverse_kl,
    stepwise_gaussian_kl,
    stft_magnitude_loss,
)
from fdistill.vocoder.speech import (
    LogMel,
    band_powers_db,
    espeak_available,
    mel_filterbank,
    multi_resolution_stft_distance,
    speak,
)
from fdistill.vocoder.wavenet import GaussianWaveNet, IAFStudent


def perturbed(module, seed=0, scale=0.1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return perturbed(GaussianWaveNet(n_mels=8, hop=16, channels=8, dilations=(1, 2, 4, 8)))


@pytest.fixture
def student():
    torch.manual_seed(1)
    return perturbed(IAFStudent(n_mels=8, hop=16, flows=2, channels=8, dilations=(1, 2)), seed=1)


MEL = torch.randn(2, 8, 10, generator=torch.Generator().manual_seed(0))


def test_mel_filterbank_is_triangular_with_unit_area():
    filters = mel_filterbank(8000, 256, 20)
    assert filters.shape == (20, 129) and (filters >= 0).all()
    hz_per_bin = 8000 / 256
    torch.testing.assert_close(filters.sum(1) * hz_per_bin, torch.ones(20), atol=0.2, rtol=0)  # area ≈ 1
    peaks = filters.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > 100  # increasing centres up to Nyquist
    features = LogMel(8000, 256, 64, 20)(torch.randn(3, 1024))
    assert features.shape == (3, 20, 1024 // 64 + 1) and torch.isfinite(features).all()


def test_spectral_distances():
    a, b = torch.randn(2, 2048), torch.randn(2, 2048)
    assert multi_resolution_stft_distance(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_resolution_stft_distance(a, b).item() > 0.1
    assert power_loss(a, a).item() == 0 and power_loss(a, 2 * a).item() > 0
    assert stft_magnitude_loss(a, a).item() == 0 and stft_magnitude_loss(a, b).item() > 0
    low = torch.sin(2 * math.pi * 300 * torch.arange(8000) / 8000)
    bands = band_powers_db(low, 8000)
    assert bands[0] > bands[1] + 30 and bands[0] > bands[2] + 30


def test_teacher_sampler_density_equals_teacher_forcing(teacher):
    audio, z, log_prob = teacher.sample(MEL, 150, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(teacher.log_prob(audio, MEL), log_prob, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(teacher.encode(audio, MEL), z, atol=1e-4, rtol=0)  # T(T⁻¹(z)) = z
    assert teacher.receptive_field == 16
    # a longer sequence than the receptive field: the windowed sampler still matches teacher forcing
    audio2, z2, _ = teacher.sample(MEL, 40, z=z[:, :40])
    torch.testing.assert_close(audio2, audio[:, :40], atol=1e-5, rtol=0)


def test_student_is_invertible_with_the_autograd_log_determinant(student):
    z = torch.randn(2, 60, generator=torch.Generator().manual_seed(1))
    x, mean, log_std = student(z, MEL)
    torch.testing.assert_close(x, z * log_std.exp() + mean)
    torch.testing.assert_close(student.inverse(x, MEL), z, atol=1e-4, rtol=0)
    jac = torch.autograd.functional.jacobian(lambda v: student(v[None], MEL[:1])[0][0], z[0])
    assert jac.triu(1).abs().max() == 0  # x_t depends on z_≤t only
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], log_std[0].sum(), atol=1e-4, rtol=1e-5)
    log_q = student.log_prob_of_sample(z, log_std)
    expected = torch.distributions.Normal(0, 1).log_prob(z).sum(-1) - torch.linalg.slogdet(jac)[1]
    assert log_q[0].item() == pytest.approx(expected[0].item(), abs=1e-3)


def test_losses_are_zero_where_they_should_be(teacher):
    mean, log_std = torch.randn(3, 50), 0.3 * torch.randn(3, 50)
    z = torch.randn(3, 50)
    x = z * log_std.exp() + mean
    # student conditionals == teacher conditionals: every per-sample log-ratio is 0, not just its mean
    assert reverse_kl(z, log_std, x, mean, log_std).item() == pytest.approx(0.0, abs=1e-6)
    assert clarinet_kl(mean, log_std, mean, log_std).item() == 0.0
    assert reverse_kl(z, log_std, x, mean + 0.5, log_std).item() > 0.1
    p = torch.distributions.Normal(torch.tensor(0.3), torch.tensor(2.0))
    q = torch.distributions.Normal(torch.tensor(-0.2), torch.tensor(0.5))
    expected = torch.distributions.kl_divergence(q, p)
    assert stepwise_gaussian_kl(q.mean, q.stddev.log(), p.mean, p.stddev.log()).item() == pytest.approx(expected.item())
    # with the teacher's own sampler as the student S = T⁻¹: z-reconstruction, x-reconstruction, oracle are 0
    z = torch.randn(2, 60, generator=torch.Generator().manual_seed(2))
    sample = teacher.sample(MEL, 60, z=z)[0]
    assert distance(teacher.encode(sample, MEL), z).item() < 1e-8
    real = 0.3 * torch.randn(2, 60)
    assert distance(teacher.sample(MEL, 60, z=teacher.encode(real, MEL))[0], real, "l1").item() < 1e-4
    with pytest.raises(ValueError, match="unknown distance"):
        distance(z, z, "cos")


TINY = [
    "corpus=synthetic",
    "teacher_steps=40",
    "student_steps=15",
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


def test_audio_experiment_end_to_end_and_resume(tmp_path, capsys):
    out = str(tmp_path / "audio")
    config = load_audio_config("recipes/vocoder/audio.yaml", TINY + [f"output_dir={out}"])
    summary = run_audio_experiment(config)
    names = list(summary["evaluation"])
    assert names == ["real speech", "teacher", "reverse_kl", "clarinet", "z_rec", "x_rec", "oracle"]
    ev = summary["evaluation"]
    assert ev["real speech"]["mr_stft_distance"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(r["teacher_loglik_per_sample"]) for r in ev.values())
    # the teacher samples one step at a time; the students in one parallel pass
    assert all(ev[m]["real_time_factor"] < ev["teacher"]["real_time_factor"] for m in names[2:])
    history = json.load(open(os.path.join(out, "teacher.json")))["history"]  # records in JSON, tensors in safetensors
    assert sum(history[-10:]) < sum(history[:10])  # the teacher learns
    for name in ("summary.json", "table.md", "spectrograms.png", "wav/oracle.wav", "wav/real_speech.wav"):
        assert os.path.exists(os.path.join(out, name))
    capsys.readouterr()
    again = run_audio_experiment(config)
    log = capsys.readouterr().out
    assert log.count("reusing") == 6
    assert again["students"] == json.load(open(os.path.join(out, "summary.json")))["students"]
    changed = load_audio_config("recipes/vocoder/audio.yaml", TINY + ["student_steps=16", f"output_dir={out}"])
    with pytest.raises(ValueError, match="student_steps differ"):
        run_audio_experiment(changed)  # a finished run is never reused under other settings


def test_synthetic_corpus_and_config_errors():
    corpus = synthetic_corpus(8000)
    assert len(corpus.train) == 9 and len(corpus.held_out) == 3 and corpus.train[0].abs().max() <= 0.9 + 1e-6
    with pytest.raises(ValueError, match="unknown methods"):
        load_audio_config(None, ["corpus=synthetic", "methods=[reverse_kl, gan]"])
    with pytest.raises(ValueError, match="multiple of hop"):
        load_audio_config(None, ["corpus=synthetic", "segment=1000"])
    with pytest.raises(ValueError, match="unknown AudioExperimentConfig keys"):
        load_audio_config(None, ["segmnet=512"])


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_espeak_speech_is_deterministic_at_the_requested_rate():
    a = speak("Hello world.", 8000)
    b = speak("Hello world.", 8000)
    assert a.dtype.name == "float32" and 0.3 * 8000 < len(a) < 3 * 8000
    assert (a == b).all() and abs(a).max() == pytest.approx(0.9, abs=1e-3)


def test_cli_audio(tmp_path):
    from fdistill.cli import main

    out = str(tmp_path / "cli")
    main(["vocoder", "audio", "recipes/vocoder/audio.yaml", *TINY, "methods=[x_rec]", f"output_dir={out}"])
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert list(summary["evaluation"]) == ["real speech", "teacher", "x_rec"]
    with pytest.raises(SystemExit):
        main(["vocoder", "audio", "recipes/vocoder/audio.yaml", "methods=[gan]", f"output_dir={tmp_path / 'x'}"])
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("stage_file", ["teacher.pt", "teacher.safetensors"])
def test_crafted_pickle_in_the_output_folder_is_never_run(tmp_path, crafted_pickle, stage_file):
    from fdistill.flows.checks import StageFileError
    from fdistill.vocoder.audio import TEACHER_SETTINGS, _settings

    out, marker = tmp_path / "audio", tmp_path / "marker"
    out.mkdir()
    config = load_audio_config(None, TINY + ["teacher_steps=2", "methods=[x_rec]", f"output_dir={out}"])
    crafted_pickle(out / stage_file, marker)
    if stage_file.endswith(".safetensors"):  # a complete-looking new-format stage whose tensors are a pickle
        json.dump({"settings": _settings(config, TEACHER_SETTINGS), "record": {}}, open(out / "teacher.json", "w"))
    with pytest.raises(StageFileError, match="(?i)delete it") as error:
        run_audio_experiment(config, log=lambda *_: None)
    assert stage_file in str(error.value) and not marker.exists()
    assert sorted(os.listdir(out)) == sorted({stage_file, "teacher.json"} & set(os.listdir(out)))  # nothing written


def test_a_stage_whose_steps_are_all_non_finite_is_an_error_not_a_result(tmp_path, monkeypatch):
    out = tmp_path / "audio"
    config = load_audio_config(None, TINY + ["teacher_steps=6", "methods=[x_rec]", f"output_dir={out}"])
    monkeypatch.setattr(GaussianWaveNet, "log_prob", lambda self, x, mel: torch.full(x.shape[:1], float("nan")))
    with pytest.raises(ValueError, match=r"teacher: 4 of 6 optimiser steps had a non-finite loss.*learning_rate"):
        run_audio_experiment(config, log=lambda *_: None)
    assert not (out / "teacher.json").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("hop=0", "hop=0 must be ≥ 1"),
        ("batch_size=0", "batch_size=0 must be ≥ 1"),
        ("teacher_steps=-5", "teacher_steps=-5 must be ≥ 1"),
        ("student_steps=0", "student_steps=0"),
        ("sample_rate=abc", "sample_rate='abc'"),
        ("sample_rate=4000", "8000 Hz or more"),
        ("learning_rate=[1, 2]", "learning_rate=\\[1, 2\\]"),
        ("learning_rate=0", "learning_rate=0"),
        ("learning_rate=.inf", "learning_rate=inf"),
        ("methods=[]", "non-empty list"),
        ("methods=[x_rec, x_rec]", "repeats"),
        ("teacher_dilations=[]", "teacher_dilations"),
        ("student_dilations=[1, 0]", "student_dilations"),
        ("seed=-1", "seed=-1 must be ≥ 0"),
        ("n_fft=8192", "n_fft=8192"),
        ("eval_seconds=0.01", "eval_seconds"),
        ("eval_clips=0", "eval_clips"),
        ("x_rec_noise=-1", "x_rec_noise"),
        ("recon_distance=cos", "recon_distance"),
        ("corpus=wav", "corpus"),
        ("output_dir=README.md", "existing file"),
    ],
)
def test_bad_settings_are_one_clear_error_before_any_work(override, message):
    with pytest.raises(ValueError, match=message):
        load_audio_config(None, ["corpus=synthetic", override])
