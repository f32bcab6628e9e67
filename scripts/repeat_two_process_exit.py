"""Repeat a 2-process FSDP2 `fdistill train` under `accelerate launch` on CPU and count the launches that fail.

A rare failure is a process that aborts after a finished run ("terminate called without an active exception",
SIGABRT at interpreter shutdown: a gloo worker thread freeing the last collective's tensors while Python
finalizes; see `fdistill.cli.entry._run_in_group`). One launch says nothing about it, so this runs the launch of
``tests/lm/test_fsdp.py`` (FSDP2 on gloo, one optimizer step on a tiny Llama) ``--times`` times and reports how
many failed and how each failure ended. Before the barrier in ``_run_in_group``, 4 of 88 launches failed on a
2-core AMD EPYC; after it, 0 of 120 (2026-12-05)::

    python scripts/repeat_two_process_exit.py --times 120 --work /tmp/exit_runs

Each failing launch's stderr is kept in ``--work`` as ``failure-N.txt``; ``--stop-at-first`` ends at the first one.
"""

import argparse
import collections
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # two_processes.py, which the launched test imports too
LAUNCHED = os.path.join(ROOT, "tests", "lm", "test_fsdp.py")  # chooses FSDP on a CPU process group, then `fdistill`
RECIPE = os.path.join(ROOT, "recipes", "accelerate", "fsdp.yaml")


def _prepare(work: str) -> str:
    """The test's tiny teacher, 8 examples and its 2-process × batch 4 recipe, in ``work``; returns the recipe."""
    import transformers
    from two_processes import write_recipes  # tests/two_processes.py: the recipes the 2-process tests run

    from fdistill import testing as tiny

    transformers.logging.set_verbosity_error()
    teacher_dir = os.path.join(work, "teacher")
    teacher = tiny.llama(2, seed=0, init=0.15)
    teacher.save_pretrained(teacher_dir)
    tiny.tokenizer().save_pretrained(teacher_dir)
    data = os.path.join(work, "data.jsonl")
    tiny.dataset(8, seed=9, teacher=teacher, tok=tiny.tokenizer()).to_json(data)
    return str(write_recipes(Path(work), teacher_dir, data)["two"])


def _free_port() -> str:
    """A TCP port free now, for the launch's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _ending(stderr: str) -> str:
    """How a failed launch ended, in a few words (the abort at exit, or the last line of the error)."""
    if "terminate called without an active exception" in stderr:
        return "SIGABRT at exit (terminate called without an active exception)"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no stderr"


def main(argv: list[str] | None = None) -> None:
    from fdistill.storage import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=40, help="launches (default 40)")
    parser.add_argument("--work", required=True, help="a folder of this script's own (emptied first)")
    parser.add_argument("--stop-at-first", action="store_true", help="end at the first failing launch")
    args = parser.parse_args(argv)
    if args.times < 1:
        parser.error(f"--times {args.times}: give a positive number of launches")
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        parser.error("the `accelerate` command is not on PATH: pip install accelerate")
    if os.path.isdir(args.work) and os.listdir(args.work) and not os.path.exists(os.path.join(args.work, "two.yaml")):
        parser.error(f"--work {args.work} holds files this script did not write: give an empty or new folder")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    recipe = _prepare(args.work)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH")) if p),
        FDISTILL_TEST_SHARDING_DIR=os.path.join(args.work, "sharding"),
    )
    os.makedirs(env["FDISTILL_TEST_SHARDING_DIR"])
    endings: collections.Counter = collections.Counter()
    for i in range(1, args.times + 1):
        command = [accelerate, "launch", "--config_file", RECIPE, "--num_processes", "2", "--mixed_precision", "no"]
        command += ["--main_process_port", _free_port(), LAUNCHED, "train", recipe, "overwrite_output_dir=true"]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - start
        if done.returncode == 0:
            print(f"launch {i}: ok ({seconds:.1f} s)", flush=True)
            continue
        ending = _ending(done.stderr)
        endings[ending] += 1
        atomic_write(os.path.join(args.work, f"failure-{i}.txt"), done.stderr)
        print(f"launch {i}: FAILED, exit {done.returncode}: {ending} ({seconds:.1f} s)", flush=True)
        if args.stop_at_first:
            args.times = i
            break
    failed = sum(endings.values())
    print(f"{failed} of {args.times} launches failed")
    for ending, count in endings.most_common():
        print(f"  {count} × {ending}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
