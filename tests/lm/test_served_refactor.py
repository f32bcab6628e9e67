"""The served teacher's split (issue 23): the package's names, the launcher off the library's import path, the
typed values the client and the samplers give, and the `fdistill sample` options read once from the command."""

import argparse
import subprocess
import sys

import pytest

from fdistill.lm.sampling import SampleRow
from fdistill.lm.served import ServedSamplingOptions, ServedScores


def test_the_library_never_imports_the_vllm_launcher_but_its_old_names_still_resolve():
    code = (
        "import sys, fdistill, fdistill.cli, fdistill.lm.served\n"
        "assert 'fdistill.testing_vllm' not in sys.modules\n"
        "from fdistill.lm.served import LocalServer, local_vllm_server\n"
        "import fdistill.testing_vllm as t\n"
        "assert local_vllm_server is t.local_vllm_server and LocalServer is t.LocalServer\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import fdistill.lm.served as served

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        served.nothing  # noqa: B018


def test_scores_unpack_as_the_three_lists_they_name():
    scores = ServedScores([[3, 1]], [[-0.1, -2.5]], [-2.5])
    ids, logprobs, token = scores
    assert (ids, logprobs, token) == (scores.topk_ids, scores.topk_logprobs, scores.token_logprobs)


def test_a_sample_row_stores_its_top_k_columns_only_when_drawn():
    row = SampleRow(0, 1, [5, 2], "the", True)
    assert list(row.record()) == [
        "input_index",
        "sample_index",
        "teacher_sample_ids",
        "teacher_sample",
        "teacher_stopped",
    ]
    drawn = SampleRow.of(dict(row.record(), teacher_topk_ids=[[5], [2]], teacher_topk_logprobs=[[-0.1], [-0.2]]))
    assert drawn.record()["teacher_topk_logprobs"] == [[-0.1], [-0.2]] and SampleRow.of(row) is row
    with pytest.raises(TypeError):
        SampleRow.of(dict(row.record(), teacher_sampel="typo"))


def test_the_sample_commands_options_are_read_once_with_defaults_for_what_it_lacks():
    few = ServedSamplingOptions.from_args(argparse.Namespace(teacher_server="http://h:1", output="o"))
    assert few == ServedSamplingOptions(url="http://h:1", output="o")
    args = argparse.Namespace(
        teacher_server="http://h:1",
        output="o",
        teacher_server_model="m",
        teacher_server_api_key="sekret-key",
        teacher_server_timeout=5.0,
        teacher_server_retries=0,
        tokenizer=None,
        teacher="t",
        gguf_file="f.gguf",
        no_progress=True,
    )
    options = ServedSamplingOptions.from_args(args)
    assert (options.model, options.api_key, options.timeout, options.retries) == ("m", "sekret-key", 5.0, 0)
    assert (options.teacher, options.gguf_file, options.show_progress) == ("t", "f.gguf", False)
    assert "sekret" not in repr(options)
