"""Offline (noise, class, teacher output) pairs for KD and DMD, sampled once and stored as a `datasets` dataset.

Layout of ``folder``: ``provenance.json`` (the teacher's and the sampler's settings, written first), then one
``shard_00000/`` … per ``shard_size`` pairs, each a ``Dataset.save_to_disk`` folder written under a temporary name
and renamed when complete. A rerun skips finished shards (resumable); a folder made with other settings is an error.
The noise of pair ``i`` comes from a generator seeded by ``(seed, shard)``, so a resumed run stores the same pairs.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from fdistill.errors import InputError


def build_pairs(folder: str, provenance: dict, total: int, shard_size: int, make_shard, log=print):
    """Write the missing shards and return all pairs as tensors ``{"noise", "label", "target"}``.

    ``make_shard(shard_index, count) -> dict of tensors`` samples one shard (deterministically from the index).
    """
    from datasets import Dataset, concatenate_datasets, load_from_disk

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "provenance.json")
    expected = json.loads(json.dumps(provenance))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != expected:
            changed = sorted(k for k in expected if saved.get(k) != expected[k]) or ["unrecorded settings"]
            raise InputError(
                f"{folder} holds teacher pairs made with other settings ({', '.join(changed)} differ); "
                "use another output_dir or delete that folder to sample them again"
            )
    else:
        with open(path, "w") as f:
            json.dump(expected, f, indent=1)
    shards = []
    for index, start in enumerate(range(0, total, shard_size)):
        shard = os.path.join(folder, f"shard_{index:05d}")
        if not os.path.isdir(shard):
            tensors = make_shard(index, min(shard_size, total - start))
            dataset = Dataset.from_dict(
                {k: v.flatten(1).tolist() if v.dim() > 1 else v.tolist() for k, v in tensors.items()}
            )
            shutil.rmtree(shard + ".tmp", ignore_errors=True)
            dataset.save_to_disk(shard + ".tmp")  # progress bars: datasets' own
            os.replace(shard + ".tmp", shard)
            if log:
                log(f"[pairs] wrote {shard} ({len(dataset)} pairs)")
        shards.append(load_from_disk(shard))
    data = concatenate_datasets(shards).with_format("numpy")[:]  # a dict of arrays
    shape = provenance["sample_shape"]
    out = {
        "noise": torch.as_tensor(data["noise"]).float().reshape(-1, *shape),
        "label": torch.as_tensor(data["label"]).long(),
        "target": torch.as_tensor(data["target"]).float().reshape(-1, *shape),
    }
    if not torch.isfinite(out["target"]).all():
        raise InputError(
            f"{folder} holds non-finite teacher outputs; the teacher diverged — retrain it (delete "
            "the output folder's teacher files) before distilling"
        )
    return out
