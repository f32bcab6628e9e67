"""Models served by vLLM: a teacher's top-k log-probabilities and samples over HTTP (no teacher weights loaded), and
the student's online samples drawn by a server whose weights follow the trainer's.

    client.py    TeacherServer: what is served, the tokenizer check, scoring and sampling requests; connect
    http.py      the transport: JSON requests retried within one deadline, redirects refused, secrets kept out
                 of messages (redact_url, parse_server_url), Traffic, TeacherServerError
    answers.py   every answer checked (check_top) and typed (ServedScores, ServedSample)
    sampling.py  offline teacher sampling through the server (sample_offline_served; `fdistill sample
                 --teacher-server URL`: sample_through_server with ServedSamplingOptions)
    student.py   StudentServer: the student's rollouts through vLLM and the weight sync (student_server=URL|"auto")
    launch.py    a local vLLM server started from vLLM's virtualenv and killed by PID (student_server="auto";
                 tests and benchmarks through :mod:`fdistill.testing_vllm`)
"""

from __future__ import annotations

from fdistill.lm.served.client import (
    ANSWER_TOLERANCE,
    API_KEY_ENV,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    PROBE_TEXT,
    ServedModel,
    ServedSample,
    ServedScores,
    TeacherServer,
    TeacherServerError,
    Traffic,
    check_top,
    connect,
    parse_server_url,
    redact_url,
)
from fdistill.lm.served.sampling import (
    ServedSampler,
    ServedSamplingOptions,
    sample_offline_served,
    sample_seed,
    sample_served_data,
    sample_through_server,
)

__all__ = [
    "ANSWER_TOLERANCE",
    "API_KEY_ENV",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "PROBE_TEXT",
    "ServedModel",
    "ServedSample",
    "ServedSampler",
    "ServedSamplingOptions",
    "ServedScores",
    "TeacherServer",
    "TeacherServerError",
    "Traffic",
    "check_top",
    "connect",
    "parse_server_url",
    "redact_url",
    "sample_offline_served",
    "sample_seed",
    "sample_served_data",
    "sample_through_server",
]

_LAUNCHER = ("local_vllm_server", "LocalServer")
_STUDENT = ("StudentServer", "StudentServerError", "STUDENT_API_KEY_ENV")


def __getattr__(name: str):
    """The vLLM launcher's old names (``from fdistill.lm.served import local_vllm_server``), from
    :mod:`fdistill.lm.served.launch`, and the student server's, loaded when first asked for."""
    if name in _LAUNCHER:
        from fdistill.lm.served import launch

        return getattr(launch, name)
    if name in _STUDENT:
        from fdistill.lm.served import student

        return getattr(student, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
