"""Saved stages of the research experiments (flows, vocoder): safetensors + JSON, never a pickle.

Saved stages (`save_stage`, `load_stage`) are safetensors + JSON: resuming never unpickles a file of an output
folder (a crafted pickle could run code); the settings a stage was made with are compared before any tensor is
loaded. The validators of settings and data these modules use live in `fdistill.checks` (re-exported here).
"""

from __future__ import annotations

import json
import os

from fdistill.checks import choice, finite_rows, names, number, output_folder, whole_number, whole_numbers  # noqa: F401
from fdistill.errors import InputError

class StageFileError(InputError):
    """A saved stage in an output folder that cannot be reused safely (old pickle format, unreadable)."""


def refuse_pickled_stage(path: str) -> None:
    """An old ``.pt``/``.pkl`` stage file (a pickle: loading it could run code) is never loaded: one clear error."""
    if os.path.exists(path):
        raise StageFileError(f"{path} is a stage file in the old pickle format, which fdistill no longer loads "
                             "(unpickling can run code). Delete it (or the whole output folder) and run again to "
                             "redo that stage, or use another output_dir.")


def save_stage(base: str, tensors: dict, meta: dict) -> None:
    """Write a finished stage: ``{base}.safetensors`` (tensors only) then ``{base}.json`` (settings, records).

    The JSON is written last (each file through a temporary name), so its presence marks a complete stage.
    """
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, base + ".safetensors.tmp")
    os.replace(base + ".safetensors.tmp", base + ".safetensors")
    with open(base + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(base + ".json.tmp", base + ".json")


def load_stage(base: str, settings: dict) -> tuple[dict, dict] | None:
    """A finished stage saved by `save_stage` as ``(tensors, meta)``, or None when there is none.

    Nothing executable is ever read: the settings in the JSON are compared before any tensor is loaded (a stage made
    with other settings is an error, never silently reused), tensors come from safetensors, and an old pickled
    ``{base}.pt`` is refused (`refuse_pickled_stage`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickled_stage(base + ".pt")
    if not os.path.exists(base + ".json"):
        return None
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise StageFileError(f"{base}.json cannot be read ({err}); delete it and run again to redo that "
                             "stage") from None
    saved = meta.get("settings") if isinstance(meta, dict) else None
    expected = json.loads(json.dumps(settings))
    if saved != expected:
        changed = sorted(k for k in expected if (saved or {}).get(k) != expected[k]) or ["unrecorded settings"]
        raise InputError(f"{base}.json was made with other settings ({', '.join(changed)} differ); use another "
                         "output_dir or delete that stage's files to redo it")
    try:
        tensors = load_file(base + ".safetensors")
    except (OSError, SafetensorError) as err:
        raise StageFileError(f"{base}.safetensors cannot be read as safetensors ({err}); delete it and "
                             f"{os.path.basename(base)}.json and run again to redo that stage") from None
    return tensors, meta
