"""MAF paper data-set loaders on small synthetic files of the published layout and shape."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from fdistill.flows.paper_datasets import PAPER_DATASET_DIMS, PAPER_DATASETS, load_paper_dataset

N_POWER, N_GAS, N_MINIBOONE = 250, 300, 150
N_HEPMASS_TRAIN, N_HEPMASS_TEST = 400, 120
BSDS_SIZES = {"train": 60, "validation": 11, "test": 17}
HEPMASS_DISCRETE = (2, 7, 11, 16, 20, 25)  # f-features with few values; "mass" (constant) is the 7th discrete one


def split_sizes(n: int) -> tuple[int, int, int]:
    n_test = int(0.1 * n)
    n_validate = int(0.1 * (n - n_test))
    return n - n_test - n_validate, n_validate, n_test


def write_power(root, rng):
    raw = rng.normal(size=(N_POWER, 8)) * np.arange(1, 9) + np.arange(8)
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", raw)
    return raw


def write_gas(root, rng):
    """8 independent sensors plus 8 near-copies placed before their originals (so the copies are the ones pruned):
    two copies of sensor 0 (a triple), one copy each of sensors 1–6."""
    bases = rng.normal(size=(N_GAS, 8)) * rng.uniform(0.5, 3.0, size=8) + rng.uniform(-5, 5, size=8)
    columns = {"Time": np.arange(N_GAS, dtype=float), "Meth": rng.uniform(0, 300, N_GAS)}
    for i in range(8):
        for k in range(2 if i == 0 else (1 if i < 7 else 0)):
            columns[f"copy{i}_{k}"] = bases[:, i] + 0.01 * rng.normal(size=N_GAS)
        columns[f"sensor{i}"] = bases[:, i]
    columns["Eth"] = rng.uniform(0, 600, N_GAS)
    frame = pd.DataFrame(columns)
    assert frame.shape[1] == 3 + 16
    (root / "gas").mkdir()
    frame.to_pickle(root / "gas" / "ethylene_CO.pickle")
    return bases


def hepmass_features(rng, n):
    features = rng.normal(size=(n, 28))
    for j in HEPMASS_DISCRETE:
        features[:, j] = rng.choice([-1.5, 0.0, 2.0], size=n)
    features[:, 27] = 1000.0  # mass
    return features


def write_hepmass(root, rng):
    header = ["# label"] + [f" f{i}" for i in range(27)] + [" mass"]
    train_labels = (rng.uniform(size=N_HEPMASS_TRAIN) < 0.6).astype(float)
    test_labels = (rng.uniform(size=N_HEPMASS_TEST) < 0.6).astype(float)
    train_features = hepmass_features(rng, N_HEPMASS_TRAIN)
    test_features = hepmass_features(rng, N_HEPMASS_TEST)
    train_features[train_labels == 0] += 50.0  # background rows would shift every statistic if they were kept
    (root / "hepmass").mkdir()
    pd.DataFrame(np.column_stack([train_labels, train_features]), columns=header).to_csv(
        root / "hepmass" / "1000_train.csv", index=False
    )
    extra = rng.normal(size=(N_HEPMASS_TEST, 1))
    pd.DataFrame(np.column_stack([test_labels, test_features, extra]), columns=header + [" extra"]).to_csv(
        root / "hepmass" / "1000_test.csv", index=False
    )
    return train_labels, train_features, test_labels, test_features


def write_miniboone(root, rng):
    raw = rng.gamma(2.0, size=(N_MINIBOONE, 43)) * rng.uniform(1, 10, size=43)
    (root / "miniboone").mkdir()
    np.save(root / "miniboone" / "data.npy", raw)
    return raw


def write_bsds300(root, rng):
    h5py = pytest.importorskip("h5py")
    (root / "BSDS300").mkdir()
    arrays = {name: rng.uniform(-0.5, 0.5, size=(n, 63)) for name, n in BSDS_SIZES.items()}
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return arrays


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("maf_data")
    rng = np.random.default_rng(0)
    raw = {
        "power": write_power(root, rng),
        "gas": write_gas(root, rng),
        "hepmass": write_hepmass(root, rng),
        "miniboone": write_miniboone(root, rng),
    }
    if _has_h5py():
        raw["bsds300"] = write_bsds300(root, rng)
    return root, raw


def _has_h5py() -> bool:
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _standardised(a: np.ndarray, ddof: int) -> np.ndarray:
    return (a - a.mean(axis=0)) / a.std(axis=0, ddof=ddof)


@pytest.mark.parametrize("name", PAPER_DATASETS)
def test_shapes_dtype_and_determinism(archive, name):
    root, _ = archive
    if name == "bsds300" and not _has_h5py():
        pytest.skip("h5py not installed")
    splits = load_paper_dataset(name, root)
    assert len(splits) == 3
    for array in splits:
        assert array.dtype == np.float32
        assert array.ndim == 2 and array.shape[1] == PAPER_DATASET_DIMS[name]
        assert np.isfinite(array).all()
    again = load_paper_dataset(name.upper(), str(root))  # case-insensitive, str root
    for a, b in zip(splits, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, n", [("power", N_POWER), ("gas", N_GAS), ("miniboone", N_MINIBOONE)])
def test_split_sizes_of_single_file_sets(archive, name, n):
    root, _ = archive
    assert tuple(len(a) for a in load_paper_dataset(name, root)) == split_sizes(n)


@pytest.mark.parametrize("name", ["power", "miniboone"])
def test_train_and_validate_together_are_standardised(archive, name):
    root, _ = archive
    train, validate, test = load_paper_dataset(name, root)
    both = np.vstack((train, validate)).astype(np.float64)
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(both.std(axis=0), 1.0, atol=1e-6)
    assert not np.allclose(train.std(axis=0), 1.0, atol=1e-6)  # train alone is not what was standardised


def test_power_matches_independent_recomputation(archive):
    root, raw = archive
    rng = np.random.RandomState(42)
    order = rng.permutation(len(raw["power"]))  # same draws as shuffling the rows in place
    kept = raw["power"][order][:, [0, 2, 4, 5, 6, 7]]
    voltage = rng.rand(len(kept)) * 0.01
    gap = rng.rand(len(kept)) * 0.001
    sub_metering = rng.rand(len(kept), 3)
    noisy = kept.copy()
    noisy[:, 0] += gap
    noisy[:, 1] += voltage
    noisy[:, 2:5] += sub_metering
    n_train, n_validate, _ = split_sizes(len(noisy))
    fit = noisy[: n_train + n_validate]
    mean = fit.sum(axis=0) / len(fit)
    std = np.sqrt(((fit - mean) ** 2).sum(axis=0) / len(fit))
    expected = ((noisy - mean) / std).astype(np.float32)
    got = np.vstack(load_paper_dataset("power", root))
    np.testing.assert_array_equal(got, expected)


def test_miniboone_matches_independent_recomputation(archive):
    root, raw = archive
    n_train, n_validate, _ = split_sizes(N_MINIBOONE)
    fit = raw["miniboone"][: n_train + n_validate]
    expected = (raw["miniboone"] - fit.mean(axis=0)) / fit.std(axis=0)
    np.testing.assert_allclose(np.vstack(load_paper_dataset("miniboone", root)), expected, rtol=1e-6, atol=1e-6)


def test_gas_prunes_near_copies_and_standardises_with_ddof_1(archive):
    root, raw = archive
    expected = _standardised(raw["gas"], ddof=1)  # the 8 original sensors survive, in order
    got = np.vstack(load_paper_dataset("gas", root))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_hepmass_keeps_signal_drops_discrete_features_and_uses_train_statistics(archive):
    root, raw = archive
    train_labels, train_features, test_labels, test_features = raw["hepmass"]
    continuous = [j for j in range(28) if j not in HEPMASS_DISCRETE and j != 27]
    assert len(continuous) == PAPER_DATASET_DIMS["hepmass"]
    signal = train_features[train_labels == 1][:, continuous]
    mean, std = signal.mean(axis=0), signal.std(axis=0, ddof=1)
    train, validate, test = load_paper_dataset("hepmass", root)

    n_validate = int(0.1 * len(signal))
    assert (len(train), len(validate), len(test)) == (len(signal) - n_validate, n_validate, int(test_labels.sum()))
    assert len(test) < N_HEPMASS_TEST  # label-0 rows were present and are gone
    np.testing.assert_allclose(np.vstack((train, validate)), (signal - mean) / std, rtol=1e-5, atol=1e-5)
    expected_test = (test_features[test_labels == 1][:, continuous] - mean) / std
    np.testing.assert_allclose(test, expected_test, rtol=1e-5, atol=1e-5)


def test_bsds300_splits_are_returned_as_stored(archive):
    root, raw = archive
    if "bsds300" not in raw:
        pytest.skip("h5py not installed")
    for got, name in zip(load_paper_dataset("bsds300", root), ("train", "validation", "test")):
        np.testing.assert_array_equal(got, raw["bsds300"][name].astype(np.float32))


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown MAF paper data set 'mnist'") as info:
        load_paper_dataset("mnist", tmp_path)
    for name in PAPER_DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name, relative",
    [("power", "power/data.npy"), ("hepmass", "hepmass/1000_test.csv"), ("bsds300", "BSDS300/BSDS300.hdf5")],
)
def test_missing_file_names_the_path_and_the_archive(tmp_path, name, relative):
    if name == "hepmass":  # the train file alone is not enough
        (tmp_path / "hepmass").mkdir()
        (tmp_path / "hepmass" / "1000_train.csv").write_text("# label, f0\n1, 0.5\n")
    with pytest.raises(FileNotFoundError) as info:
        load_paper_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path / relative) in message
    assert "1161203" in message and "data.tar.gz" in message


def test_wrong_column_counts_say_what_was_expected(tmp_path):
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((100, 7)))
    with pytest.raises(ValueError, match="expected 8 columns"):
        load_paper_dataset("power", tmp_path)
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(100, 42)))
    with pytest.raises(ValueError, match="expected 43 columns"):
        load_paper_dataset("miniboone", tmp_path)


def test_gas_without_the_dropped_columns_is_rejected(tmp_path):
    (tmp_path / "gas").mkdir()
    pd.DataFrame({"Time": [0.0, 1.0], "s0": [1.0, 2.0]}).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_paper_dataset("gas", tmp_path)


def test_bsds300_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(ImportError, match=r"pip install fdistill\[paper-data\]"):
        load_paper_dataset("bsds300", tmp_path)


def test_hepmass_test_file_without_the_extra_column_is_rejected(tmp_path):
    (tmp_path / "hepmass").mkdir()
    frame = pd.DataFrame(np.column_stack([np.ones(50), np.random.default_rng(0).normal(size=(50, 28))]))
    frame.to_csv(tmp_path / "hepmass" / "1000_train.csv", index=False)
    frame.to_csv(tmp_path / "hepmass" / "1000_test.csv", index=False)  # same columns as train: one too few
    with pytest.raises(ValueError, match="expected the test file to have exactly one more"):
        load_paper_dataset("hepmass", tmp_path)


@pytest.mark.parametrize("name", ["power", "gas", "hepmass", "miniboone"])
def test_one_non_finite_cell_is_refused_with_file_count_and_row(tmp_path, name):
    """One NaN in a data file would skip every training step; it is one error naming the file, count and first row."""
    rng = np.random.default_rng(1)
    writers = {"power": write_power, "gas": write_gas, "hepmass": write_hepmass, "miniboone": write_miniboone}
    writers[name](tmp_path, rng)
    if name in ("power", "miniboone"):
        path = tmp_path / name / "data.npy"
        data = np.load(path)
        data[7, 2] = np.nan
        np.save(path, data)
    elif name == "gas":
        path = tmp_path / "gas" / "ethylene_CO.pickle"
        frame = pd.read_pickle(path)
        frame.iloc[7, 4] = np.inf
        frame.to_pickle(path)
    else:
        path = tmp_path / "hepmass" / "1000_train.csv"
        frame = pd.read_csv(path)
        frame.iloc[7, 3] = np.nan
        frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"holds 1 non-finite values .* in 1 rows; the first is row 7") as error:
        load_paper_dataset(name, tmp_path)
    assert str(path) in str(error.value)


def test_non_finite_data_stops_the_experiment_before_anything_is_written(tmp_path):
    from fdistill.flows import load_experiment_config, run_experiment

    write_power(tmp_path, np.random.default_rng(2))
    data = np.load(tmp_path / "power" / "data.npy")
    data[3, 0] = np.nan
    np.save(tmp_path / "power" / "data.npy", data)
    out = tmp_path / "never"
    config = load_experiment_config("recipes/flows/power_maf.yaml", [f"data_root={tmp_path}", f"output_dir={out}"])
    with pytest.raises(ValueError, match="POWER file .*data.npy holds 1 non-finite"):
        run_experiment(config)
    assert not out.exists()
