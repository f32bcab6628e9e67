"""Local-file loaders for the MAF paper's five tabular density-estimation sets: POWER, GAS, HEPMASS, MINIBOONE, BSDS300.

Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow for Density Estimation", introduced the standard
preprocessing of these sets, and "Distilling Normalizing Flows" (2025) evaluates on them. Nothing is downloaded: the
files are the preprocessed archive published with the MAF paper, ``data.tar.gz`` of Zenodo record 1161203
(https://zenodo.org/record/1161203). Unpack it and pass the folder holding the per-set folders as ``root``::

    root/
        power/data.npy
        gas/ethylene_CO.pickle
        hepmass/1000_train.csv
        hepmass/1000_test.csv
        miniboone/data.npy
        BSDS300/BSDS300.hdf5

(the archive unpacks to ``data/``, so ``root`` is usually ``.../data``). BSDS300 needs h5py
(``pip install fdistill[paper-data]``).

Pickle: the GAS file is a pandas pickle, and unpickling can run code, so it is read only here, from the file the user
downloaded from the MAF archive into ``root`` (the published format has no pickle-free equivalent) — never from an
output folder, whose stages are safetensors + JSON (`fdistill.flows.checks.load_stage`). Only pass a ``root`` you
trust. The ``.npy`` files are read with NumPy's default ``allow_pickle=False``. Every file is checked for NaN/±inf
before preprocessing: one error names the file, the count and the first bad row.

Why this is written here: no maintained library ships these loaders with the standard preprocessing, and results are
comparable with the published ones only if its details match (POWER's noise columns and seed, GAS's correlation
pruning, HEPMASS's removal of discrete features, which statistics normalise which split). `load_paper_dataset`
reproduces that preprocessing and returns ``(train, validate, test)``.

Splits follow the MAF convention where the archive has no split: the last ``int(0.1 * N)`` rows are the test set,
and the last ``int(0.1 * N')`` of the remaining ``N'`` rows are the validation set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fdistill.errors import InputError

from . import checks

PAPER_DATASETS: tuple[str, ...] = ("power", "gas", "hepmass", "miniboone", "bsds300")
PAPER_DATASET_DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}

ARCHIVE = "data.tar.gz of Zenodo record 1161203 (https://zenodo.org/record/1161203), published with the MAF paper"

# Files each set needs, relative to ``root``.
_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}

_POWER_RAW_COLUMNS = 8
_POWER_SEED = 42
_GAS_DROPPED = ("Meth", "Eth", "Time")
_GAS_CORRELATION_LIMIT = 0.98
_HEPMASS_MAX_REPEATS = 5  # a feature whose smallest value occurs more often than this is treated as discrete
_BSDS300_SPLITS = ("train", "validation", "test")

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def load_paper_dataset(name: str, root: str | os.PathLike) -> Splits:
    """(train, validate, test) float32 arrays with the standard MAF preprocessing of one of `PAPER_DATASETS`.

    Args:
        name: ``power``, ``gas``, ``hepmass``, ``miniboone`` or ``bsds300`` (any case).
        root: the unpacked MAF archive's ``data`` folder (layout in the module docstring).

    Returns:
        Three ``[N, D]`` float32 arrays, ``D = PAPER_DATASET_DIMS[name]``.

    Raises:
        ValueError: unknown name, or a file whose contents do not have the published shape.
        FileNotFoundError: a file of the expected layout is missing.
        ImportError: BSDS300 without h5py installed.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in PAPER_DATASETS:
        raise InputError(f"unknown MAF paper data set {name!r}; choose one of {', '.join(PAPER_DATASETS)}")
    root = Path(root)
    paths = [root / rel for rel in _FILES[key]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{key.upper()} needs {path}, which does not exist. Unpack the MAF archive ({ARCHIVE}) and pass its "
                f"'data' folder as root (expected files under root: {', '.join(_FILES[key])})."
            )
    h5py = _import_h5py() if key == "bsds300" else None

    if key == "power":
        splits = _power(paths[0])
    elif key == "gas":
        splits = _gas(paths[0])
    elif key == "hepmass":
        splits = _hepmass(*paths)
    elif key == "miniboone":
        splits = _miniboone(paths[0])
    else:
        splits = _bsds300(paths[0], h5py)

    expected = PAPER_DATASET_DIMS[key]
    for split_name, array in zip(("train", "validate", "test"), splits):
        if array.ndim != 2 or array.shape[1] != expected:
            raise InputError(
                f"{key.upper()} {split_name} split has shape {array.shape} after preprocessing; expected {expected} "
                f"columns. Are the files under {root} the unpacked MAF archive ({ARCHIVE})?"
            )
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in splits)


def _import_h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading BSDS300 needs h5py: pip install fdistill[paper-data] (or pip install h5py)") from exc
    return h5py


def _split_test_validate(data: np.ndarray, what: str) -> Splits:
    """Last ``int(0.1 N)`` rows → test; last ``int(0.1 N')`` rows of the remaining ``N'`` → validation."""
    n_test = int(0.1 * data.shape[0])
    rest = data[: data.shape[0] - n_test]
    n_validate = int(0.1 * rest.shape[0])
    if n_validate == 0:
        raise InputError(f"{what} has only {data.shape[0]} rows, too few for the 10% test / 10% validation split")
    return rest[: rest.shape[0] - n_validate], rest[rest.shape[0] - n_validate :], data[data.shape[0] - n_test :]


def _normalise_with_train_validate(train: np.ndarray, validate: np.ndarray, test: np.ndarray) -> Splits:
    """Standardise all splits with the mean and (population) std of train and validation together."""
    both = np.vstack((train, validate))
    mean, std = both.mean(axis=0), both.std(axis=0)
    return (train - mean) / std, (validate - mean) / std, (test - mean) / std


def _power(path: Path) -> Splits:
    data = np.load(path)  # allow_pickle=False: a .npy holding objects is refused, never unpickled
    checks.finite_rows(f"POWER file {path}", data)
    if data.ndim != 2 or data.shape[1] != _POWER_RAW_COLUMNS:
        raise InputError(
            f"POWER file {path} holds an array of shape {data.shape}; expected {_POWER_RAW_COLUMNS} "
            "columns (the MAF archive's power/data.npy)"
        )
    rng = np.random.RandomState(_POWER_SEED)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # Uniform noise that breaks ties between the rounded readings. The draw order (voltage, gap, sub-metering) differs
    # from the column order (gap, voltage, sub-metering, time); both are part of the standard preprocessing.
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _normalise_with_train_validate(*_split_test_validate(data, f"POWER file {path}"))


def _gas(path: Path) -> Splits:
    import pandas as pd

    try:
        data = pd.read_pickle(path)
    except Exception as exc:  # old pickles, wrong format: say which file failed
        raise InputError(f"could not read GAS file {path} as a pandas pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, pd.DataFrame):
        raise InputError(f"GAS file {path} holds a {type(data).__name__}; expected a pandas DataFrame")
    missing = [c for c in _GAS_DROPPED if c not in data.columns]
    if missing:
        raise InputError(
            f"GAS file {path} lacks the columns {missing}; expected a DataFrame with "
            f"{', '.join(_GAS_DROPPED)} and the sensor columns (the MAF archive's gas/ethylene_CO.pickle)"
        )
    data = data.drop(columns=list(_GAS_DROPPED))
    checks.finite_rows(f"GAS file {path}", data)
    # Drop near-duplicate sensors one at a time: the first column highly correlated with another goes, then recount.
    while True:
        counts = (data.corr() > _GAS_CORRELATION_LIMIT).to_numpy().sum(axis=1)
        flagged = np.flatnonzero(counts > 1)
        if flagged.size == 0:
            break
        data = data.iloc[:, [j for j in range(data.shape[1]) if j != flagged[0]]]
    data = (data - data.mean()) / data.std()
    return _split_test_validate(data.to_numpy(), f"GAS file {path}")


def _hepmass(train_path: Path, test_path: Path) -> Splits:
    import pandas as pd

    train = pd.read_csv(train_path, index_col=False)
    test = pd.read_csv(test_path, index_col=False)
    checks.finite_rows(f"HEPMASS file {train_path}", train)
    checks.finite_rows(f"HEPMASS file {test_path}", test)
    # Signal events only (label 1 in the first column), then the label goes.
    train = train[train.iloc[:, 0] == 1].iloc[:, 1:]
    test = test[test.iloc[:, 0] == 1].iloc[:, 1:]
    test = test.iloc[:, :-1]  # the published test file carries one extra trailing column
    if test.shape[1] != train.shape[1]:
        raise InputError(
            f"HEPMASS test file {test_path} has {test.shape[1] + 2} columns and train file {train_path} "
            f"{train.shape[1] + 1}; expected the test file to have exactly one more (the MAF archive's "
            "hepmass/1000_test.csv)"
        )
    mean, std = train.mean().to_numpy(), train.std().to_numpy()
    # A constant feature (the 1000_* files fix the signal mass at 1000) would be 0/0; dividing by 1 instead makes it
    # all zeros, which the discrete-feature rule below removes. Other features are unaffected.
    std = np.where(std > 0, std, 1.0)
    train = (train.to_numpy() - mean) / std
    test = (test.to_numpy() - mean) / std
    # Remove features with too many re-occurring values: the smallest value of the feature occurs more than 5 times.
    smallest_counts = [np.count_nonzero(column == column.min()) for column in train.T]
    keep = [j for j, count in enumerate(smallest_counts) if count <= _HEPMASS_MAX_REPEATS]
    train, test = train[:, keep], test[:, keep]
    n_validate = int(0.1 * train.shape[0])
    if n_validate == 0:
        raise InputError(
            f"HEPMASS train file {train_path} has only {train.shape[0]} signal rows, too few for the "
            "10% validation split"
        )
    return train[: train.shape[0] - n_validate], train[train.shape[0] - n_validate :], test


def _miniboone(path: Path) -> Splits:
    data = np.load(path)
    checks.finite_rows(f"MINIBOONE file {path}", data)
    if data.ndim != 2:
        raise InputError(f"MINIBOONE file {path} holds an array of shape {data.shape}; expected a 2-D [N, 43] array")
    return _normalise_with_train_validate(*_split_test_validate(data, f"MINIBOONE file {path}"))


def _bsds300(path: Path, h5py) -> Splits:
    with h5py.File(path, "r") as f:
        missing = [s for s in _BSDS300_SPLITS if s not in f]
        if missing:
            raise InputError(
                f"BSDS300 file {path} lacks the datasets {missing}; expected "
                f"{', '.join(_BSDS300_SPLITS)} (the MAF archive's BSDS300/BSDS300.hdf5)"
            )
        splits = tuple(np.asarray(f[s][:], dtype=np.float32) for s in _BSDS300_SPLITS)
    for split, array in zip(_BSDS300_SPLITS, splits):
        checks.finite_rows(f"BSDS300 file {path} ({split})", array)
    return splits
