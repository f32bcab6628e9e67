"""Offline teacher-sampling throughput of the packaged SmolLM2-135M-Instruct at several batch sizes (CPU or GPU).

    python scripts/bench_sampling.py --batch-sizes 1 8 32 --inputs 32 --max-new-tokens 32

Runs `fdistill.lm.sampling.sample_offline` (the code `fdistill sample` runs) on chatterbot
prompts into a temporary folder and reports inputs/s and new tokens/s per batch size.
"""

import argparse
import tempfile
import time

import torch
from datasets import Dataset

from fdistill.cli.demo import SMOLLM2, SMOLLM2_GGUF, chatterbot_pairs
from fdistill.lm.loading import load_model_and_tokenizer
from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model, tok = load_model_and_tokenizer(SMOLLM2, gguf_file=SMOLLM2_GGUF)
    data = Dataset.from_list(chatterbot_pairs()[: args.inputs])
    print(
        f"| batch size | inputs/s | new tokens/s | seconds | (torch {torch.__version__}, {torch.get_num_threads()} threads) |"
    )
    print("|---|---|---|---|---|")
    for bs in args.batch_sizes:
        settings = OfflineSamplingSettings(max_new_tokens=args.max_new_tokens, batch_size=bs, use_chat_template=True)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = sample_offline(model, tok, data, tmp + "/s", settings, teacher_id="smollm2", show_progress=False)
            seconds = time.perf_counter() - start
        tokens = sum(len(x) for x in out["teacher_sample_ids"])
        print(f"| {bs} | {len(out) / seconds:.2f} | {tokens / seconds:.1f} | {seconds:.1f} | |", flush=True)


if __name__ == "__main__":
    main()
