"""What every wing of fdistill needs of a torch / transformers model: unwrap it, find its devices, seed its RNG.

Shared by the language-model trainer, the evaluation, the kernels and the research modules (which must not
import the language-model wing for it).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch


def unwrap(model):
    """``model`` without distributed wrappers (DDP, accelerate: ``.module``); a PEFT wrapper is kept."""
    while hasattr(model, "module"):
        model = model.module
    return model


def base_model(model):
    """The transformers model under PEFT / DDP wrappers (its ``config`` says which architecture it is)."""
    model = unwrap(model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@contextmanager
def seeded(seed: int, devices=None):
    """Torch's global RNG seeded with ``seed`` inside the block only; the caller's RNG state is untouched.

    For code that draws from the global generator and accepts no ``torch.Generator``:
    transformers' ``generate()``, a model's weight initialisation. On entry the CPU
    generator and those of ``devices`` are saved and seeded as ``torch.manual_seed(seed)``
    seeds them, so the block draws exactly what it would after ``torch.manual_seed(seed)``;
    on exit they are restored (``torch.random.fork_rng``). Where a tensor is drawn
    directly, pass an explicit ``torch.Generator`` instead.

    Arguments:
        seed: the seed, as for ``torch.manual_seed``.
        devices: the accelerator devices the block draws on (e.g. the model's device);
            CPU entries are ignored, the CPU generator is always forked. Default: the
            current CUDA device when CUDA is initialised. Other devices' generators are
            neither seeded nor touched.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    if devices is None:
        devices = [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_initialized() else []
    forked: dict[str, set[int]] = {}  # device type -> indices
    for device in map(torch.device, devices):
        if device.type not in ("cpu", "meta"):
            index = device.index if device.index is not None else torch.get_device_module(device.type).current_device()
            forked.setdefault(device.type, set()).add(index)
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))  # the CPU generator
        for device_type, indices in forked.items():
            stack.enter_context(torch.random.fork_rng(devices=sorted(indices), device_type=device_type))
        torch.random.default_generator.manual_seed(seed)
        for device_type, indices in forked.items():
            for index in indices:
                if device_type == "cuda":
                    torch.cuda.default_generators[index].manual_seed(seed)
                else:  # single-device backends (mps): the module's current device
                    torch.get_device_module(device_type).manual_seed(seed)
        yield


def model_devices(*models) -> set[torch.device]:
    """Every device holding a parameter of ``models``: where their sampling may draw (a sharded model spans several)."""
    return {p.device for m in models for p in m.parameters()}
