"""Benchmark: what a Hub checkpoint push (``hub_strategy="checkpoint"``) costs the training thread, per save.

    python scripts/bench_hub_push.py --steps 16 --save-steps 2

A tiny 2-layer Llama student is distilled (js) on CPU with every save pushed (``hub_always_push``) through the real
``huggingface_hub`` client to the local Hub stand-in of the tests (``tests/hub_standin.py``, HTTP on 127.0.0.1). The
time the training thread spends in ``FDistillMixin._push_checkpoint`` (hard-linking the committed checkpoint into its
staging folder and writing the model card) is timed with ``perf_counter``; the upload itself runs in the background.
Printed: the number of saves, the median and maximum time per push on the training thread, the steps pushed.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--save-steps", type=int, default=2)
    opts = parser.parse_args()

    import hub_standin
    import pytest
    import transformers

    import fdistill.lm.trainer as trainer_module
    from fdistill import FDistillTrainer
    from fdistill import testing as tiny

    transformers.logging.set_verbosity_error()
    spent: list[float] = []
    push = trainer_module.FDistillMixin._push_checkpoint

    def timed(self, folder):
        start = time.perf_counter()
        push(self, folder)
        spent.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module.FDistillMixin, "_push_checkpoint", timed)
        with hub_standin.serve(patch, Path(tmp)):
            tok = tiny.tokenizer()
            teacher = tiny.llama(2, seed=0, init=0.15)
            args = tiny.config(
                os.path.join(tmp, "run"),
                objective="js",
                max_steps=opts.steps,
                save_strategy="steps",
                save_steps=opts.save_steps,
                push_to_hub=True,
                hub_model_id="me/bench",
                hub_strategy="checkpoint",
                hub_always_push=True,
            )
            trainer = FDistillTrainer(
                model=tiny.llama(2, seed=1),
                teacher_model=teacher,
                args=args,
                train_dataset=tiny.dataset(64, seed=0, teacher=teacher, tok=tok),
                processing_class=tok,
            )
            trainer.train()
    spent.sort()
    print(
        f"saves: {len(spent)}; training thread per push: median {spent[len(spent) // 2] * 1e3:.1f} ms, "
        f"max {spent[-1] * 1e3:.1f} ms; steps pushed: {trainer.hub_push_report.pushed}"
    )


if __name__ == "__main__":
    main()
