"""Student rollouts in process vs through a vLLM student server (issue 24, item 1): samples/s and the weight sync's time.

    bash scripts/install_vllm.sh                      # vLLM's own virtualenv (once)
    python scripts/bench_student_server.py            # ~3 min here: one server start (~1 min), then the timings

The demo's student: a 4-layer copy of the packaged SmolLM2-135M-Instruct (layers [0, 10, 19, 29]), float32. The same
chat prompts, batch, length and ancestral sampling for both rows: ``model.generate`` in this process
(:func:`fdistill.lm.sampling.sample_completions`, what the trainer does today) and :class:`StudentServer.sample
<fdistill.lm.served.student.StudentServer>` against a server started as ``student_server="auto"`` starts it
(:func:`fdistill.lm.served.launch.launch_student`, VLLM_SERVER_DEV_MODE=1). The sync: safetensors of the student's
state dict to /dev/shm, then ``/collective_rpc`` reload_weights and ``/reset_prefix_cache``; timed ``--syncs`` times.
Server and trainer share this machine's CPU cores (on a GPU machine the server would have its own).

Measured here, two runs on 2 cores shared with other jobs (load ≈ 6), batch 8, 32 new tokens, 2 threads:

    in process 0.52 samples/s (17 tokens/s); vLLM server 8.05 samples/s (258 tokens/s), 15.42x; server start-up
    88 s; sync 0.89 s (median of 4; first, with the probe check, 2.68 s)
    in process 0.75 samples/s (24 tokens/s); vLLM server 5.42 samples/s (173 tokens/s), 7.24x; server start-up
    109 s; sync 0.71 s (median of 4; first, with the probe check, 0.43 s)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import transformers

# the served-teacher benchmark's model and chat prompts (scripts/ is on the path when a script runs)
from bench_served_teacher import GGUF, PROMPTS, SMOLLM2  # noqa: E402

from fdistill.lm import rollouts
from fdistill.lm.config import DistillArguments
from fdistill.lm.data import DistillCollator
from fdistill.lm.loading import load_model_and_tokenizer
from fdistill.lm.sampling import sample_completions
from fdistill.lm.served.launch import default_python, launch_student
from fdistill.lm.served.student import StudentServer
from fdistill.lm.student import create_student_from_teacher


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vllm-python", default=default_python())
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed batches per row (after one untimed)")
    p.add_argument("--syncs", type=int, default=5)
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()

    teacher, tok = load_model_and_tokenizer(SMOLLM2, gguf_file=GGUF, dtype="float32")
    student = create_student_from_teacher(teacher.eval(), layers=[0, 10, 19, 29]).float().eval()
    del teacher
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    settings = DistillArguments(objective="tvd", max_new_tokens=args.max_new_tokens)
    config = rollouts.student_generation_config(student, tok, settings, torch.device("cpu"), None)
    collator = DistillCollator(tok, is_encoder_decoder=False, use_chat_template=True)
    batch = collator([{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(args.batch)])
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]

    def timed(draw) -> tuple[float, int]:
        draw()  # warm-up
        tokens, start = 0, time.perf_counter()
        for _ in range(args.rounds):
            tokens += int(draw()[1].sum())
        return time.perf_counter() - start, tokens

    torch.manual_seed(0)
    local_s, local_tokens = timed(lambda: sample_completions(student, prompt_ids, prompt_mask, config))
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        start = time.perf_counter()
        launched = launch_student(
            student, tok, f"{tmp}/served", python=args.vllm_python, max_model_len=512, startup_timeout=900
        )
        startup = time.perf_counter() - start
        server = StudentServer(launched.url, student, tok, config, weights_root=f"{tmp}/w", launched=launched)
        try:
            for step in range(args.syncs):
                server.sync(student, step)
            served_s, served_tokens = timed(lambda: server.sample(prompt_ids, prompt_mask, step=1))
        finally:
            server.close()
    n = args.batch * args.rounds
    syncs = server.sync_seconds[1:] or server.sync_seconds  # the first also checks a probe's log-probabilities
    print(
        f"4-layer SmolLM2-shaped student (float32, {sum(p.numel() for p in student.parameters()) / 1e6:.0f} M "
        f"parameters), batch {args.batch}, {args.max_new_tokens} new tokens, ancestral sampling, "
        f"{torch.get_num_threads()} threads: in process {n / local_s:.2f} samples/s ({local_tokens / local_s:.0f} "
        f"tokens/s); vLLM server {n / served_s:.2f} samples/s ({served_tokens / served_s:.0f} tokens/s), "
        f"{local_s / served_s:.2f}x; server start-up {startup:.0f} s; sync {statistics.median(syncs):.2f} s "
        f"(median of {len(syncs)}; first, with the probe check, {server.sync_seconds[0]:.2f} s)"
    )


if __name__ == "__main__":
    main()
