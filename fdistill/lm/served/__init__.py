"""A teacher served by vLLM: its top-k log-probabilities and samples over HTTP, no teacher weights loaded.

    client.py    TeacherServer: what is served, the tokenizer check, scoring and sampling requests; connect
    http.py      the transport: JSON requests retried within one deadline, redirects refused, secrets kept out
                 of messages (redact_url, parse_server_url), Traffic, TeacherServerError
    answers.py   every answer checked (check_top) and typed (ServedScores, ServedSample)
    sampling.py  offline teacher sampling through the server (sample_offline_served; `fdistill sample
                 --teacher-server URL`: sample_through_server with ServedSamplingOptions)

A local vLLM server for tests and benchmarks: :mod:`fdistill.testing_vllm` (not imported by the library).
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

_MOVED_TO_TESTING = ("local_vllm_server", "LocalServer")


def __getattr__(name: str):
    """The vLLM launcher's old names (``from fdistill.lm.served import local_vllm_server``), from
    :mod:`fdistill.testing_vllm`, imported only when asked for: the library itself never starts a server."""
    if name in _MOVED_TO_TESTING:
        from fdistill import testing_vllm

        return getattr(testing_vllm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
