"""FSDP2 on 2 CPU processes (gloo): the student and the frozen teacher sharded, one optimizer step equal to 1 process.

`accelerate launch --config_file recipes/accelerate/fsdp.yaml` on a machine without GPUs starts the processes with
the FSDP settings in their environment, but accelerate 1.15 then runs DDP: ``PartialState._prepare_backend`` names
a CPU process group ``MULTI_CPU`` (accelerate/state.py:800-808) and ``AcceleratorState`` switches to FSDP only for
the GPU-like types (state.py:986-1016, the list omits ``MULTI_CPU``); no variable or config key changes that. So
this file is also the launched script: before running ``fdistill train`` it lets ``AcceleratorState`` choose FSDP
for a ``MULTI_CPU`` process group too — the same assignment accelerate makes on GPUs, nothing else. The rest is
the real code path: accelerate's FSDP2 preparation of the student (``fully_shard`` per decoder layer, then the
root), fdistill's sharding of the frozen teacher, the training step, and ``save_model`` gathering the full weights.
Each process writes what it saw during its training step (DTensor shards of both models), which the test checks.
"""

import json
import os
import shutil
import subprocess
import sys

import torch
import transformers
import yaml
from two_processes import assert_same_step, port_flags, write_recipes

from fdistill import testing as tiny

# tests/, where two_processes.py is (the launched script imports it), and the repository root above it
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
RECIPE = os.path.join(ROOT, "recipes", "accelerate", "fsdp.yaml")


def _choose_fsdp_on_cpu() -> None:
    """Make ``AcceleratorState`` take the FSDP plugin on a CPU (gloo) process group as it does on GPUs (test only)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_choosing_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # what state.py:1013-1016 does for MULTI_GPU and the other accelerator types
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type  # as state.py:1037 does

    AcceleratorState.__init__ = init_choosing_fsdp


def _sharding(model) -> dict:
    """Whether ``model`` is an FSDP2 module and how much of its parameters this process holds."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    return {
        "fsdp_module": isinstance(model, FSDPModule),
        "fsdp_submodules": sum(isinstance(m, FSDPModule) for m in model.modules()),
        "dtensor": all(isinstance(p, DTensor) for p in params),
        "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
        "total": sum(p.numel() for p in params),
    }


def _record_sharding(report_dir: str) -> None:
    """Write, on each process's first training step, how its student and teacher are sharded."""
    from fdistill.lm.trainer import FDistillTrainer

    step = FDistillTrainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        if not getattr(self, "_sharding_recorded", False):
            self._sharding_recorded = True
            seen = {
                "distributed_type": str(self.accelerator.distributed_type),
                "fsdp_version": self.accelerator.state.fsdp_plugin.fsdp_version if self.is_fsdp_enabled else None,
                "world_size": torch.distributed.get_world_size(),
                "student": _sharding(model),
                "teacher": _sharding(self.teacher),
            }
            rank = torch.distributed.get_rank()
            with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as f:
                json.dump(seen, f)
        return step(self, model, inputs, *args, **kwargs)

    FDistillTrainer.training_step = training_step


if __name__ == "__main__":  # the script `accelerate launch` runs: `fdistill` with FSDP chosen on CPU
    _choose_fsdp_on_cpu()
    _record_sharding(os.environ["FDISTILL_TEST_SHARDING_DIR"])
    from fdistill.cli import main

    main(sys.argv[1:])


transformers.logging.set_verbosity_error()


def test_recipe_is_fsdp2_and_saves_whole_weights():
    """The recipe the test launches: FSDP2, and a state dict ``save_model`` writes (a sharded one writes none)."""
    config = yaml.safe_load(open(RECIPE))
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_version"] == 2
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_two_process_fsdp_training_equals_one_process(tmp_path):
    """FSDP2 on 2 CPU processes × batch 4 takes the same optimizer step as 1 process × batch 8 (global counts),
    with the student and the teacher sharded (DTensor parameters, each process holding about half)."""
    teacher_dir = tmp_path / "teacher"
    tiny.llama(2, seed=0, init=0.15).save_pretrained(teacher_dir)
    tiny.tokenizer().save_pretrained(teacher_dir)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)
    data = tmp_path / "data.jsonl"
    tiny.dataset(8, seed=9, teacher=teacher, tok=tiny.tokenizer()).to_json(str(data))
    recipes = write_recipes(tmp_path, teacher_dir, data)
    from fdistill.cli import main

    main(["train", str(recipes["one"])])

    report = tmp_path / "sharding"
    report.mkdir()
    path = os.pathsep.join(p for p in (ROOT, TESTS, os.environ.get("PYTHONPATH")) if p)  # the script imports fdistill
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=path, FDISTILL_TEST_SHARDING_DIR=str(report)
    )
    launch = [shutil.which("accelerate"), "launch", "--config_file", RECIPE, "--num_processes", "2"]
    launch += ["--mixed_precision", "no", *port_flags()]  # float32, so the 2-process step can be compared closely
    done = subprocess.run(
        [*launch, __file__, "train", str(recipes["two"])], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    for rank in (0, 1):
        seen = json.loads((report / f"rank{rank}.json").read_text())
        assert seen["distributed_type"] == "DistributedType.FSDP" and seen["fsdp_version"] == 2, seen
        assert seen["world_size"] == 2
        for model in ("student", "teacher"):
            s = seen[model]
            assert s["fsdp_module"] and s["dtensor"], (model, s)
            assert s["fsdp_submodules"] > 1, (model, s)  # the decoder layers are their own FSDP units
            assert s["local"] < 0.6 * s["total"], (model, s)  # each process holds about half

    diff, moved = assert_same_step(tmp_path, teacher)
    print(f"FSDP step vs 1 process: max |Δw| = {diff:.2e} (step size {moved:.2e})")
