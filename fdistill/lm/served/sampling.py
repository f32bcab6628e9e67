"""Offline teacher sampling through a teacher served by vLLM (``fdistill sample --teacher-server URL``).

:func:`sample_offline_served` is :func:`fdistill.lm.offline.sample_offline` with the teacher behind a
:class:`~fdistill.lm.served.client.TeacherServer`: the same batches, files, resume and provenance, each sample
drawn by the server with its own seed (:func:`sample_seed`). :func:`sample_through_server` is the `fdistill sample`
command's step, its options typed (:class:`ServedSamplingOptions`).
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field

from fdistill.errors import InputError
from fdistill.lm.offline import OfflineSamplingSettings, SampleRow, sample_offline_with
from fdistill.lm.served.client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, TeacherServer


def sample_seed(seed: int, *indices: int) -> int:
    """The seed of one served sample: a hash of (run seed, indices) — offline: (input, sample); a student rollout:
    (training step, process, request, row) — so batching and resuming never change it."""
    digest = hashlib.sha256(":".join(str(i) for i in (seed, *indices)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ServedSampler:
    """What :func:`fdistill.lm.offline.sample_offline` needs of a teacher, for one behind a server."""

    is_encoder_decoder = False

    def __init__(self, server: TeacherServer, tokenizer):
        self.server, self.tokenizer = server, tokenizer

    @property
    def position_limit(self) -> int | None:
        """The server's longest sequence (vLLM's ``max_model_len``), or None when it does not say."""
        return self.server.model.max_model_len

    def prepare(self, settings: OfflineSamplingSettings, device) -> None:
        """Refuse settings a server cannot sample with (beam search) before any work."""
        if settings.decoding == "beam":
            raise InputError(
                "decoding='beam' through a teacher server is not supported (vLLM's completions API samples or "
                "decodes greedily): use decoding='sample' or 'greedy', or load the teacher with --teacher."
            )

    def draw(
        self, prompts: list[list[int]], indices: list[int], settings: OfflineSamplingSettings, batch_id: int
    ) -> list[SampleRow]:
        """Sample ``settings.num_samples`` completions of each prompt in ``indices`` through the server, seeded per row."""
        items = [(i, s) for i in indices for s in range(settings.num_samples)]
        drawn = self.server.sample(
            [prompts[i] for i, _ in items],
            [sample_seed(settings.seed, i, s) for i, s in items],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            greedy=settings.decoding == "greedy",
            logprobs=settings.topk_logprobs,
            names=[f"input {i} sample {s}" for i, s in items],
        )
        rows = []
        for (i, s), d in zip(items, drawn):
            topk = settings.topk_logprobs
            rows.append(
                SampleRow(
                    input_index=i,
                    sample_index=s,
                    teacher_sample_ids=d.ids,
                    teacher_sample=self.tokenizer.decode(d.ids, skip_special_tokens=True).strip(),
                    teacher_stopped=d.stopped,
                    teacher_topk_ids=d.topk_ids if topk else None,
                    teacher_topk_logprobs=d.topk_logprobs if topk else None,
                )
            )
        return rows


def sample_offline_served(
    server: TeacherServer,
    tokenizer,
    dataset,
    output_dir: str,
    settings: OfflineSamplingSettings,
    *,
    show_progress: bool = True,
):
    """:func:`fdistill.lm.offline.sample_offline` with the teacher behind ``server``: same batches, files, resume
    and provenance; the teacher is recorded as the served model (name, root, revision where reported, and the
    weights' fingerprint when the server's folder is on this machine), so a rerun against another served model
    is refused. Each sample is drawn with its own seed (:func:`sample_seed`)."""
    server.check_tokenizer(tokenizer)
    from fdistill.lm.loading import tokenizer_fingerprint

    return sample_offline_with(
        ServedSampler(server, tokenizer),
        tokenizer,
        dataset,
        output_dir,
        settings,
        teacher_id=f"{server.model.name} (served by {server.url})",
        teacher_revision=server.model.revision,
        fingerprint={"model": server.model.fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer)},
        extra_provenance={"teacher_server": server.model.record()},
        show_progress=show_progress,
    )


@dataclass(frozen=True)
class ServedSamplingOptions:
    """Where and how `fdistill sample --teacher-server URL` samples (:func:`sample_through_server`).

    Attributes:
        url: the server's address (``--teacher-server``); ``model``: the served model's name (default: its only one).
        output: the folder of the sampled dataset (``--output``).
        api_key, timeout, retries: the client's (:class:`TeacherServer`); None: its defaults.
        tokenizer: the prompts' tokenizer (Hub name or folder); default: ``teacher``, else the served model's folder.
        teacher, gguf_file: the ``--teacher`` named alongside, and its GGUF file (read when it names the tokenizer).
        show_progress: show a progress bar.
    """

    url: str
    output: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float | None = None
    retries: int | None = None
    tokenizer: str | None = None
    teacher: str | None = None
    gguf_file: str | None = None
    show_progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServedSamplingOptions:
        """The options of the `fdistill sample` command's parsed ``args`` (options it lacks keep their defaults)."""
        given = vars(args)
        return cls(
            url=given["teacher_server"],
            output=given["output"],
            model=given.get("teacher_server_model"),
            api_key=given.get("teacher_server_api_key"),
            timeout=given.get("teacher_server_timeout"),
            retries=given.get("teacher_server_retries"),
            tokenizer=given.get("tokenizer"),
            teacher=given.get("teacher"),
            gguf_file=given.get("gguf_file"),
            show_progress=not given.get("no_progress", False),
        )


def sample_through_server(options: ServedSamplingOptions, data, settings: OfflineSamplingSettings):
    """``data`` (prompts prepared as `fdistill sample` does) sampled through the server of ``options`` into
    ``options.output``. The prompts are tokenised with ``options.tokenizer`` (default: ``options.teacher``, else the
    served model's folder), checked against the server's tokenizer first."""
    from transformers import AutoTokenizer

    from fdistill.lm.loading import resolve_package_path

    server = TeacherServer(
        options.url,
        options.model,
        api_key=options.api_key,
        timeout=DEFAULT_TIMEOUT if options.timeout is None else options.timeout,
        retries=DEFAULT_RETRIES if options.retries is None else options.retries,
    )
    source = options.tokenizer or options.teacher or server.model.root
    if not source:
        raise InputError("--teacher-server needs a tokenizer: give --tokenizer NAME_OR_FOLDER.")
    gguf = options.gguf_file if source == options.teacher else None
    tokenizer = AutoTokenizer.from_pretrained(resolve_package_path(source), **({"gguf_file": gguf} if gguf else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        return sample_offline_served(
            server, tokenizer, data, options.output, settings, show_progress=options.show_progress
        )
    finally:
        server.close()


def sample_served_data(args: argparse.Namespace, data, settings: OfflineSamplingSettings):
    """`fdistill sample --teacher-server URL`: :func:`sample_through_server` with the options of the command's
    parsed ``args`` (:meth:`ServedSamplingOptions.from_args`)."""
    return sample_through_server(ServedSamplingOptions.from_args(args), data, settings)
