"""What the 2-process tests share (DDP in test_cli.py, FSDP2 in test_fsdp.py): one recipe run by 1 process × batch 8
and by 2 processes × batch 4, and the check that both took the same optimizer step."""

import socket

import torch.testing as torch_testing
import transformers
import yaml

from fdistill.lm.student import create_student_from_teacher

# One SGD step of lr 1 with no clipping on `kl` (offline samples, token reduction): equal global counts make the
# 2-process step equal to the 1-process one, and a large step makes a wrong reduction visible.
ONE_STEP = {
    "student_layers": [1],
    "objective": "kl",
    "loss_reduction": "token",
    "max_steps": 1,
    "optim": "sgd",
    "learning_rate": 1.0,
    "max_grad_norm": 1.0e9,
    "use_cpu": True,
    "report_to": [],
    "save_strategy": "no",
    "disable_tqdm": True,
    "seed": 0,
    "dataloader_drop_last": True,
    "max_new_tokens": 6,
}


def port_flags() -> list[str]:
    """`accelerate launch` flags for a rendezvous port that is free now: two test runs at once on one machine (two
    checkouts, two pytest processes) would otherwise both take the default 29500 and one would fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(s.getsockname()[1])]


def write_recipes(tmp_path, teacher_dir, data) -> dict:
    """``{"one": recipe for 1 process × batch 8, "two": recipe for 2 processes × batch 4}``, each its own output_dir."""
    recipes = {}
    for name, batch in (("one", 8), ("two", 4)):
        recipes[name] = tmp_path / f"{name}.yaml"
        settings = {
            **ONE_STEP,
            "teacher": str(teacher_dir),
            "train_data": str(data),
            "output_dir": str(tmp_path / name),
        }
        recipes[name].write_text(yaml.safe_dump({**settings, "per_device_train_batch_size": batch}))
    return recipes


def assert_same_step(tmp_path, teacher) -> tuple[float, float]:
    """The students saved in ``tmp_path/one`` and ``tmp_path/two`` are equal (rtol 1e-5, atol 1e-6), and the step
    moved the weights (else the comparison would mean nothing); returns (largest difference, step size)."""
    one = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    two = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "two")
    start = create_student_from_teacher(teacher, layers=ONE_STEP["student_layers"])
    moved = max((a - b).abs().max().item() for a, b in zip(one.parameters(), start.parameters()))
    assert moved > 1e-3
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch_testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    return max((a - b).abs().max().item() for a, b in zip(one.parameters(), two.parameters())), moved
