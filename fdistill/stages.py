"""Saved stages of the research experiments (flows, vocoder, diffusion): safetensors + JSON, never a pickle.

Saved stages (`save_stage`, `load_stage`) are safetensors + JSON: resuming never unpickles a file of an output
folder (a crafted pickle could run code); the settings a stage was made with are compared before any tensor is
loaded. Each file is written through `fdistill.storage.atomic_write`. The shared runner (`fdistill.runner`) imports
it from here; `fdistill.flows.checks` re-exports it under its old names.
"""

from __future__ import annotations

import json
import os

from fdistill.errors import InputError
from fdistill.storage import atomic_write

__all__ = ["StageFileError", "refuse_pickled_stage", "save_stage", "read_stage_json", "load_stage"]


class StageFileError(InputError):
    """A saved stage in an output folder that cannot be reused safely (old pickle format, unreadable)."""


def refuse_pickled_stage(path: str) -> None:
    """An old ``.pt``/``.pkl`` stage file (a pickle: loading it could run code) is never loaded: one clear error."""
    if os.path.exists(path):
        raise StageFileError(
            f"{path} is a stage file in the old pickle format, which fdistill no longer loads "
            "(unpickling can run code). Delete it (or the whole output folder) and run again to "
            "redo that stage, or use another output_dir."
        )


def save_stage(base: str, tensors: dict, meta: dict) -> None:
    """Write a finished stage: ``{base}.safetensors`` (tensors only) then ``{base}.json`` (settings, records).

    The JSON is written last (each file through a temporary name), so its presence marks a complete stage.
    """
    from safetensors.torch import save

    atomic_write(base + ".safetensors", save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
    atomic_write(base + ".json", json.dumps(meta, indent=1))


def read_stage_json(path: str, settings: dict, delete: str = "that stage's files") -> dict | None:
    """The JSON object at ``path`` (a finished stage's record) when it was made with ``settings``; None when absent.

    An unreadable file is a `StageFileError`, a record of other settings (its ``"settings"`` entry compared with
    ``settings`` through JSON) an `InputError` naming the settings that differ — never a silent reuse. ``delete``
    names what to delete to redo the stage (e.g. a run folder).
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise StageFileError(
            f"{path} cannot be read ({err}); delete {delete} and run again to redo that stage"
        ) from None
    saved = meta.get("settings") if isinstance(meta, dict) else None
    expected = json.loads(json.dumps(settings))
    if saved != expected:
        changed = sorted(k for k in expected if (saved or {}).get(k) != expected[k]) or ["unrecorded settings"]
        raise InputError(
            f"{path} was made with other settings ({', '.join(changed)} differ); use another "
            f"output_dir or delete {delete} to redo that stage"
        )
    return meta


def load_stage(base: str, settings: dict) -> tuple[dict, dict] | None:
    """A finished stage saved by `save_stage` as ``(tensors, meta)``, or None when there is none.

    Nothing executable is ever read: the settings in the JSON are compared before any tensor is loaded (a stage made
    with other settings is an error, never silently reused; `read_stage_json`), tensors come from safetensors, and an
    old pickled ``{base}.pt`` is refused (`refuse_pickled_stage`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickled_stage(base + ".pt")
    meta = read_stage_json(base + ".json", settings)
    if meta is None:
        return None
    try:
        tensors = load_file(base + ".safetensors")
    except (OSError, SafetensorError) as err:
        raise StageFileError(
            f"{base}.safetensors cannot be read as safetensors ({err}); delete it and "
            f"{os.path.basename(base)}.json and run again to redo that stage"
        ) from None
    return tensors, meta
