"""The diffusion experiment's method registry: one `Distiller` a method, typed `Sampler` results, one error
listing the registered names, and a method registered from outside fdistill running like a built-in one."""

import pytest
import torch

from fdistill.diffusion import experiment as ex
from fdistill.diffusion.losses import pd_weight
from fdistill.diffusion.schedule import NoiseSchedule
from fdistill.errors import InputError

TINY = [
    "teacher_steps=10",
    "hidden=16",
    "depth=1",
    "toy_train_size=32",
    "seeds=[0]",
    "num_eval_samples=20",
    "pd_start_steps=2",
    "eval_steps=[2,1]",
    "kd_teacher_steps=2",
    "num_pairs=8",
    "pairs_shard_size=8",
    "kd_steps=2",
    "pd_steps_per_round=2",
    "batch_size=8",
]


def test_every_built_in_method_is_one_registered_distiller():
    assert ex.METHODS == ("kd", "pd", "vsd", "dmd", "guidance") == tuple(ex.DISTILLERS)
    assert all(isinstance(d, ex.Distiller) and d.name == n for n, d in ex.DISTILLERS.items())
    assert [n for n in ex.METHODS if ex.get_distiller(n).needs_pairs] == ["kd", "dmd"]
    config = ex.load_experiment_config(None, ["output_dir=/tmp/unused"])
    assert ex.get_distiller("pd").step_counts(config) == [8, 4, 2, 1]
    assert ex.get_distiller("guidance").step_counts(config) == [16, 8, 4, 2, 1]
    assert ex.student_settings(config, "guidance", 0)["student_classes"] == "conditional"


def test_an_unknown_method_is_one_error_listing_the_registered_names():
    with pytest.raises(InputError, match=r"method='cm'.*\['kd', 'pd', 'vsd', 'dmd', 'guidance'\]"):
        ex.get_distiller("cm")
    with pytest.raises(InputError, match="registered already"):
        ex.register_distiller(ex.distillers.KnowledgeDistillation())


def test_distill_returns_typed_samplers_and_a_registered_method_runs_like_a_built_in_one(tmp_path):
    class Copy(ex.Distiller):
        """The teacher itself as a 1-step 'student' (a stage like any other)."""

        name, settings = "copy", ("kd_steps",)

        def distill(self, job):
            net, record = job.stage(job.tag, job.settings, lambda: (job.teacher, {"copied": True}))
            return [ex.Sampler(self.name, 1, net, None, record)]

    ex.register_distiller(Copy())
    try:
        config = ex.load_experiment_config(None, [f"output_dir={tmp_path}/run", "methods=[pd, copy]", *TINY])
        problem = ex.Problem(config)
        teacher, _ = ex.get_teacher(config, problem, log=None)
        pd = ex.distill(config, problem, teacher, "pd", 0, log=None)
        assert [(s.name, s.steps, s.w) for s in pd] == [("pd", 1, None)]
        assert isinstance(pd[0], ex.Sampler) and isinstance(pd[0].net, torch.nn.Module)
        (copy,) = ex.distill(config, problem, teacher, "copy", 0, log=None)
        assert copy.record == {"copied": True} and (tmp_path / "run" / "students" / "copy_seed0.json").exists()
        loaded = ex.distill(config, problem, teacher, "copy", 0, log=None, train=False)
        assert loaded[0].record == {"copied": True}
    finally:
        ex.DISTILLERS.pop("copy")


def test_bad_arguments_of_the_building_blocks_are_input_errors():
    with pytest.raises(InputError, match="steps=0"):
        NoiseSchedule(16).trailing_timesteps(0)
    with pytest.raises(InputError, match="unknown PD weighting"):
        pd_weight(torch.ones(2), torch.ones(2), kind="snr")
