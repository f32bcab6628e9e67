"""Offline teacher sampling: one row set per input, resumable, process-count independent, consumed by the trainer."""

import json
import multiprocessing as mp

import pytest
import torch
import transformers
from datasets import load_from_disk

from fdistill import FDistillConfig, FDistillTrainer
from fdistill import testing as tiny
from fdistill.sampling import (
    PROVENANCE_FILE,
    OfflineSamplingSettings,
    prompt_batches,
    sample_completions,
    sample_offline,
    sampling_config,
)

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


def run(arch, tok, data, out, **kw):
    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    settings = OfflineSamplingSettings(**{"max_new_tokens": 6, "batch_size": 4, **kw})
    return sample_offline(teacher, tok, data, str(out), settings, teacher_id=f"tiny-{arch}", show_progress=False)


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_k_samples_per_input_in_input_order(tok, tmp_path, arch):
    data = tiny.dataset(10, seed=1)
    result = run(arch, tok, data, tmp_path / "s", num_samples=3)
    assert len(result) == 30
    assert result["input_index"] == [i for i in range(10) for _ in range(3)]
    assert result["sample_index"] == [0, 1, 2] * 10
    assert result["prompt"] == [p for p in data["prompt"] for _ in range(3)]
    for ids, stopped, text in zip(result["teacher_sample_ids"], result["teacher_stopped"], result["teacher_sample"]):
        assert 1 <= len(ids) <= 6
        assert stopped == (ids[-1] == tok.eos_token_id) and tok.eos_token_id not in ids[:-1]
        assert text == tok.decode(ids, skip_special_tokens=True).strip()
    prov = json.loads((tmp_path / "s" / PROVENANCE_FILE).read_text())
    assert prov["teacher"] == f"tiny-{arch}" and prov["settings"]["num_samples"] == 3 and prov["num_rows"] == 30
    assert not (tmp_path / "s" / ".fdistill_work").exists()
    # the samples are not all the same (sampling, not greedy)
    assert len({tuple(x) for x in result["teacher_sample_ids"]}) > 10


def test_beam_and_greedy_and_topk_logprobs(tok, tmp_path):
    data = tiny.dataset(4, seed=2)
    beams = run("llama", tok, data, tmp_path / "b", decoding="beam", num_beams=3, num_samples=2)
    assert len(beams) == 8
    greedy = run("llama", tok, data, tmp_path / "g", decoding="greedy", topk_logprobs=3)
    again = run("llama", tok, data, tmp_path / "g2", decoding="greedy", topk_logprobs=3, seed=99)
    assert greedy["teacher_sample_ids"] == again["teacher_sample_ids"]  # greedy ignores the seed
    for ids, top_ids, top_lp in zip(greedy["teacher_sample_ids"], greedy["teacher_topk_ids"], greedy["teacher_topk_logprobs"]):
        assert len(top_ids) == len(ids) and all(len(t) == 3 for t in top_ids)
        assert [t[0] for t in top_ids] == ids  # greedy picks the most likely token
        assert all(lp[0] >= lp[1] >= lp[2] for lp in top_lp)


def test_same_result_whatever_the_batching_of_work_and_reruns(tok, tmp_path):
    data = tiny.dataset(9, seed=3)
    a = run("llama", tok, data, tmp_path / "a", num_samples=2)
    b = run("llama", tok, data, tmp_path / "a", num_samples=2)  # finished: loads, does not resample
    assert a["teacher_sample_ids"] == b["teacher_sample_ids"]
    with pytest.raises(ValueError, match="different run"):
        run("llama", tok, data, tmp_path / "a", num_samples=3)


def _kill_midway(out, started):
    """Child process: sample slowly and get killed after the first batches are written."""
    import time

    tok = tiny.tokenizer()
    teacher = tiny.llama(2, seed=0, init=0.15)
    original = teacher.generate

    def slow_generate(*a, **kw):
        time.sleep(0.3)
        return original(*a, **kw)

    teacher.generate = slow_generate
    settings = OfflineSamplingSettings(max_new_tokens=6, batch_size=2, num_samples=2)
    sample_offline(teacher, tok, tiny.dataset(16, seed=4), out, settings, teacher_id="tiny-llama", show_progress=False)


def test_kill_and_resume_gives_identical_content(tok, tmp_path):
    out = str(tmp_path / "k")
    proc = mp.get_context("spawn").Process(target=_kill_midway, args=(out, None))
    proc.start()
    work = tmp_path / "k" / ".fdistill_work"
    for _ in range(600):  # wait (≤ 60 s) until a few batches are on disk, then kill
        if work.exists() and len(list(work.glob("batch_*.jsonl"))) >= 3:
            break
        proc.join(0.1)
    proc.kill()
    proc.join()
    done = len(list(work.glob("batch_*.jsonl")))
    assert 3 <= done < 8, done  # really interrupted midway
    assert not (tmp_path / "k" / "state.json").exists()  # nothing that looks like a finished dataset
    resumed = run("llama", tok, tiny.dataset(16, seed=4), out, num_samples=2, batch_size=2)
    fresh = run("llama", tok, tiny.dataset(16, seed=4), tmp_path / "f", num_samples=2, batch_size=2)
    assert len(resumed) == 32
    assert resumed["teacher_sample_ids"] == fresh["teacher_sample_ids"]


def test_trainer_consumes_the_output(tok, tmp_path):
    data = tiny.dataset(8, seed=5)
    run("llama", tok, data, tmp_path / "s")
    args = FDistillConfig(output_dir=str(tmp_path / "o"), objective="js", max_steps=2, per_device_train_batch_size=4,
                          max_new_tokens=6, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    teacher = tiny.llama(2, seed=0, init=0.15)
    trainer = FDistillTrainer(model=tiny.llama(1, seed=1), teacher_model=teacher, args=args,
                              train_dataset=load_from_disk(str(tmp_path / "s")), processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(decoding="nucleus"), "decoding='nucleus'"),
        (dict(decoding="greedy", num_samples=2), "greedy decoding gives one output"),
        (dict(decoding="beam", num_beams=2, num_samples=3), "beam search returns at most"),
        (dict(top_p=0.0), "top_p"),
        (dict(decoding="beam", topk_logprobs=3), "topk_logprobs with beam search"),
    ],
)
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        OfflineSamplingSettings(**kw)


def test_bad_input_before_any_work(tok, tmp_path):
    data = tiny.dataset(4, seed=6)
    with pytest.raises(ValueError, match="no column 'text'"):
        run("llama", tok, data, tmp_path / "x", prompt_column="text")
    no_pad = tiny.tokenizer()
    no_pad.pad_token = None
    teacher = tiny.llama(2, seed=0)
    with pytest.raises(ValueError, match="no pad token"):
        sample_offline(teacher, no_pad, data, str(tmp_path / "y"), OfflineSamplingSettings(), teacher_id="t")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an fdistill sampling folder"):
        run("llama", tok, data, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bart", "t5"])
def test_static_cache_draws_the_same_samples_as_the_dynamic_cache(tok, arch):
    """The fast path (preallocated KV cache; compiled decode step on CUDA) changes no sample for a given seed."""
    model = getattr(tiny, arch)(2, seed=0, init=0.15)
    prompt_ids, prompt_mask = next(prompt_batches(model, tok, tiny.prompts(12, seed=1), batch_size=12))
    drawn = []
    for cache in (None, "static"):
        torch.manual_seed(0)
        config = sampling_config(model, tok, max_new_tokens=10, cache_implementation=cache)
        drawn.append(sample_completions(model, prompt_ids, prompt_mask, config))
    assert drawn[0][1].sum() > 12  # non-trivial samples
    assert torch.equal(drawn[0][0][drawn[0][1]], drawn[1][0][drawn[1][1]])
    assert torch.equal(drawn[0][1], drawn[1][1])
