"""Offline teacher sampling: one row set per input, resumable, process-count independent, consumed by the trainer."""

import json
import multiprocessing as mp

import pytest
import torch
import transformers
from datasets import load_from_disk

from fdistill import FDistillConfig, FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.data import position_limit
from fdistill.lm.logits_cache import CACHE_COLUMNS, CODES, IDS, SCALE, TOP, decode
from fdistill.lm.sampling import (
    PROVENANCE_FILE,
    OfflineSamplingSettings,
    prompt_batches,
    sample_completions,
    sample_offline,
    sampling_config,
    seeded,
)

transformers.logging.set_verbosity_error()


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
    assert set(CACHE_COLUMNS) <= set(greedy.column_names) and "teacher_topk_logprobs" not in greedy.column_names
    for row in greedy:  # the top k in the cache format (fdistill.lm.logits_cache), decoded
        top_ids, top_lp = decode(*(row[c] for c in (IDS, TOP, SCALE, CODES)))
        assert top_ids.shape == (len(row["teacher_sample_ids"]), 3)
        assert top_ids[:, 0].tolist() == row["teacher_sample_ids"]  # greedy picks the most likely token
        assert (top_lp[:, :-1] >= top_lp[:, 1:]).all() and (top_lp <= 0).all()


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
    args = FDistillConfig(
        output_dir=str(tmp_path / "o"),
        objective="js",
        max_steps=2,
        per_device_train_batch_size=4,
        max_new_tokens=6,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    teacher = tiny.llama(2, seed=0, init=0.15)
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=args,
        train_dataset=load_from_disk(str(tmp_path / "s")),
        processing_class=tok,
    )
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


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(temperature=float("inf")), "temperature=inf: use a finite positive temperature"),
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(top_p=float("nan")), "top_p=nan"),
        (dict(batch_size=0), "batch_size=0: use a positive number"),
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(num_beams=0, decoding="sample"), "num_beams=0"),
        (dict(num_samples="3"), "num_samples='3': use an int"),
        (dict(batch_size=2.5), "batch_size=2.5: use an int"),
        (dict(prompt_column=""), "prompt_column=''"),
    ],
)
def test_bad_settings_are_refused_with_the_value(kw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        OfflineSamplingSettings(**kw)


def _fail_after(model, calls: int):
    """Make ``model.generate`` raise after ``calls`` successful calls (an interrupted run)."""
    original, count = model.generate, [0]

    def generate(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.generate = generate
    return model


def test_resume_under_another_teacher_or_tokenizer_is_refused(tok, tmp_path):
    data, out = tiny.dataset(12, seed=7), str(tmp_path / "r")
    settings = OfflineSamplingSettings(max_new_tokens=4, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        sample_offline(
            _fail_after(tiny.llama(2, seed=0), 2), tok, data, out, settings, teacher_id="t", show_progress=False
        )
    assert len(list((tmp_path / "r" / ".fdistill_work").glob("batch_*.jsonl"))) == 2
    with pytest.raises(InputError, match=r"unfinished run \(2 batches done\).*the teacher changed.*delete that folder"):
        sample_offline(tiny.llama(2, seed=1), tok, data, out, settings, teacher_id="t", show_progress=False)
    other_tok = tiny.tokenizer()
    other_tok.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(InputError, match="the tokenizer changed") as error:
        sample_offline(tiny.llama(2, seed=0), other_tok, data, out, settings, teacher_id="t", show_progress=False)
    assert "teacher changed" not in str(error.value)
    # the same teacher content under another name resumes the run; nothing is mixed
    result = sample_offline(tiny.llama(2, seed=0), tok, data, out, settings, teacher_id="./t", show_progress=False)
    fresh = sample_offline(
        tiny.llama(2, seed=0), tok, data, str(tmp_path / "f"), settings, teacher_id="t", show_progress=False
    )
    assert result["teacher_sample_ids"] == fresh["teacher_sample_ids"]
    prov = json.loads((tmp_path / "r" / PROVENANCE_FILE).read_text())
    assert prov["teacher_fingerprint"].startswith("tensors-sha256:") and prov["tokenizer_fingerprint"].startswith(
        "sha256:"
    )
    with pytest.raises(InputError, match="finished samples from a different run.*the teacher changed"):
        sample_offline(tiny.llama(2, seed=1), tok, data, out, settings, teacher_id="t", show_progress=False)


def test_too_long_prompts_are_refused_before_any_write_and_a_corrected_rerun_runs(tok, tmp_path):
    from datasets import Dataset

    long = Dataset.from_dict({"prompt": ["the cat sat", " ".join(["the cat"] * 60)]})  # 120 tokens
    teacher = tiny.gpt2(1, seed=0)  # learned positions: 128
    out = tmp_path / "l"
    with pytest.raises(
        InputError, match=r"longest prompt \(row 1\) needs 136 positions.*teacher's 128.*lower max_new_tokens"
    ):
        sample_offline(teacher, tok, long, str(out), OfflineSamplingSettings(max_new_tokens=16), teacher_id="t")
    assert not out.exists()
    bart = tiny.bart(1, seed=0)
    with pytest.raises(InputError, match="decoder writes 1 \\+ max_new_tokens=200"):
        sample_offline(bart, tok, long, str(out), OfflineSamplingSettings(max_new_tokens=200), teacher_id="t")
    assert not out.exists()
    ok = OfflineSamplingSettings(max_new_tokens=4, max_prompt_length=100)  # prompts keep their last 100 tokens
    assert len(sample_offline(teacher, tok, long, str(out), ok, teacher_id="t", show_progress=False)) == 2
    assert position_limit(tiny.t5(1, seed=0)) is None  # relative positions: no limit


def test_a_run_that_failed_before_any_batch_does_not_block_a_corrected_rerun(tok, tmp_path):
    data, out = tiny.dataset(4, seed=8), str(tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        sample_offline(
            _fail_after(tiny.llama(2, seed=0), 0),
            tok,
            data,
            out,
            OfflineSamplingSettings(max_new_tokens=4),
            teacher_id="t",
            show_progress=False,
        )
    result = sample_offline(
        tiny.llama(2, seed=0),
        tok,
        data,
        out,
        OfflineSamplingSettings(max_new_tokens=3),
        teacher_id="t",
        show_progress=False,
    )
    assert len(result) == 4 and max(len(ids) for ids in result["teacher_sample_ids"]) <= 3


def test_bad_prompts_and_outputs_before_any_write(tok, tmp_path):
    from datasets import Dataset

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="output=.* is not valid: it is an existing file, not a folder"):
        run("llama", tok, tiny.dataset(2), tmp_path / "file")
    for prompts, fragment in (
        (["the cat", "  "], "row 1: '  ' is blank text"),
        (["the cat", None], "row 1: None"),
        ([[4, 5], []], "row 1: \\[\\] is an empty list"),
    ):
        with pytest.raises(InputError, match=fragment):
            run("llama", tok, Dataset.from_dict({"prompt": prompts}), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_replacing_the_teacher_folder_mid_run_is_refused(tok, tmp_path, monkeypatch):
    """The issue's scenario: interrupt sampling from ./folder, save another model into the folder, rerun."""
    from fdistill.lm.loading import load_model_and_tokenizer

    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))  # remembered file digests stay in the test

    folder, out, data = tmp_path / "teacher", str(tmp_path / "o"), tiny.dataset(9, seed=9)
    settings = OfflineSamplingSettings(max_new_tokens=4, batch_size=3)
    tiny.llama(2, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tokenizer = load_model_and_tokenizer(str(folder))
    with pytest.raises(KeyboardInterrupt):
        sample_offline(
            _fail_after(model, 1), tokenizer, data, out, settings, teacher_id=str(folder), show_progress=False
        )
    run_record = json.loads((tmp_path / "o" / ".fdistill_work" / "run.json").read_text())
    assert run_record["teacher_fingerprint"].startswith("files-sha256:")
    tiny.llama(2, seed=1).save_pretrained(folder)  # same config, other weights
    model, tokenizer = load_model_and_tokenizer(str(folder))
    with pytest.raises(InputError, match="the teacher changed"):
        sample_offline(model, tokenizer, data, out, settings, teacher_id=str(folder), show_progress=False)
    assert len(list((tmp_path / "o" / ".fdistill_work").glob("batch_*.jsonl"))) == 1  # nothing added
    (tmp_path / "o" / ".fdistill_work" / "run.json").unlink()
    with pytest.raises(InputError, match="no run record"):
        sample_offline(model, tokenizer, data, out, settings, teacher_id=str(folder), show_progress=False)


def test_seeded_draws_as_manual_seed_and_leaves_the_callers_rng_untouched():
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded(0):
        assert torch.equal(torch.rand(4), want)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(RuntimeError, match="inside"), seeded(1, devices=["cpu"]):
        raise RuntimeError("inside")
    assert torch.equal(torch.get_rng_state(), state)  # restored on an error too


def test_offline_sampling_leaves_the_callers_rng_untouched(tok, tmp_path):
    data = tiny.dataset(5, seed=4)
    torch.manual_seed(321)
    state = torch.get_rng_state()
    a = run("llama", tok, data, tmp_path / "a", num_samples=2)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(7)  # whatever the caller drew before: the same samples for the same seed
    b = run("llama", tok, data, tmp_path / "b", num_samples=2)
    assert a["teacher_sample_ids"] == b["teacher_sample_ids"]
    c = run("llama", tok, data, tmp_path / "c", num_samples=2, seed=1)
    assert a["teacher_sample_ids"] != c["teacher_sample_ids"]


def test_tiny_factories_leave_the_callers_rng_untouched(tok):
    state = torch.get_rng_state()
    first = tiny.llama(1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)
    again = tiny.llama(1, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), again.state_dict().values()))
    state = torch.get_rng_state()
    tiny.sample_ids(first, tok, tiny.prompts(3, seed=0), max_new_tokens=4, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
