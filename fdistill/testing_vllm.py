"""A local vLLM server for tests and benchmarks: started from vLLM's own virtualenv, on loopback, killed by PID.

Not part of the library's import path (nothing in :mod:`fdistill` imports it): ``tests/lm/test_served_vllm.py`` and
``scripts/bench_served_teacher.py`` do, to serve a teacher for :mod:`fdistill.lm.served`. The launcher itself is
:mod:`fdistill.lm.served.launch` (which ``student_server="auto"`` uses too); its names are kept here.
"""

from __future__ import annotations

from fdistill.lm.served.launch import LocalServer, default_python, free_port, local_vllm_server, start_vllm_server

__all__ = ["LocalServer", "default_python", "free_port", "local_vllm_server", "start_vllm_server"]
