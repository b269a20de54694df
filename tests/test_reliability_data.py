"""Bad data is a DataError naming the dataset, the array and the fix, from load_dataset or make_splits.

Kinds tried: NaN pixels, infinite pixels, pixels above max_value, negative pixels, negative labels,
labels >= num_classes, non-integer (fractional) labels, NaN labels, string labels, images and labels
of different lengths, images that are not (N, C, H, W), a loader returning something else than a
RawDataset, splits larger than the dataset (single pool and official test set), and negative or
non-integer split sizes. Each is refused before any model sees the data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from advbench.data import DATASETS, RawDataset, check_raw_dataset, load_dataset, make_splits
from advbench.errors import DataError


def _raw(n: int = 60, *, test: int | None = None, float_x: bool = False, num_classes: int = 3) -> RawDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 4, 4)).astype(np.float32 if float_x else np.uint8)
    y = np.arange(n) % num_classes
    xt = yt = None
    if test is not None:
        xt, yt = rng.integers(0, 256, (test, 1, 4, 4)).astype(np.uint8), np.arange(test) % num_classes
    return RawDataset("user-set", x, y, xt, yt, num_classes, tuple("abc"[:num_classes]))


def _with(raw: RawDataset, **changes: object) -> RawDataset:
    return replace(raw, **changes)


def _x(raw: RawDataset, value: float, at: tuple[int, ...] = (5, 0, 1, 2)) -> np.ndarray:
    x = raw.x_train.astype(np.float32)
    x[at] = value
    return x


def _y(raw: RawDataset, value: object, at: int = 7, dtype: object = None) -> np.ndarray:
    y = raw.y_train.astype(dtype or raw.y_train.dtype)
    y[at] = value
    return y


BAD: dict[str, tuple[Callable[[RawDataset], RawDataset], list[str]]] = {
    "nan-pixel": (lambda r: _with(r, x_train=_x(r, np.nan)), ["x_train holds 1 NaN or infinite", "example 5"]),
    "inf-pixel": (lambda r: _with(r, x_train=_x(r, np.inf)), ["x_train holds 1 NaN or infinite"]),
    "pixel-above-max": (lambda r: _with(r, x_train=_x(r, 300.0)), ["pixel values in [", "300]", "max_value=255"]),
    "negative-pixel": (lambda r: _with(r, x_train=_x(r, -1.0)), ["pixel values in [-1,", "rescale"]),
    "negative-label": (lambda r: _with(r, y_train=_y(r, -1)), ["y_train holds 1 label(s) outside 0..2", "min -1"]),
    "label-too-big": (lambda r: _with(r, y_train=_y(r, 3)), ["y_train holds 1 label(s) outside 0..2", "max 3"]),
    "fractional-label": (lambda r: _with(r, y_train=_y(r, 1.5, dtype=np.float64)), ["non-integer labels", "1.5"]),
    "nan-label": (lambda r: _with(r, y_train=_y(r, np.nan, dtype=np.float64)), ["non-integer labels", "nan"]),
    "string-labels": (
        lambda r: _with(r, y_train=np.array(["a", "b", "c"] * 20)),
        ["y_train has dtype <U1", "map class names to indices"],
    ),
    "length-mismatch": (lambda r: _with(r, y_train=r.y_train[:-1]), ["x_train has shape (60, 1, 4, 4)", "(59,)"]),
    "not-nchw": (lambda r: _with(r, x_train=r.x_train[:, 0]), ["expected (N, C, H, W) images"]),
    "test-label-too-big": (
        lambda r: _with(r, x_test=r.x_train[:10], y_test=np.full(10, 9)),
        ["y_test holds 10 label(s) outside 0..2"],
    ),
    "list-not-array": (lambda r: _with(r, y_train=list(r.y_train)), ["y_train a list", "numpy arrays"]),
    "one-class": (lambda r: _with(r, num_classes=1), ["num_classes=1; expected an integer >= 2"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_make_splits_refuses_bad_data(kind):
    damage, expected = BAD[kind]
    raw = damage(_raw())
    with pytest.raises(DataError) as info:
        make_splits(raw, train=30, calibration=10, test=10)
    message = str(info.value)
    assert message.startswith("user-set: "), message  # names the dataset
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "expected" in message and ("fix the loader of 'user-set'" in message or "repair" in message)


def test_float_images_in_range_are_fine():
    raw = _with(_raw(float_x=True), x_train=_raw(float_x=True).x_train / 255.0 * 16.0, max_value=16)
    splits = make_splits(raw, train=30, calibration=10, test=10)
    assert float(splits.train.x.max()) <= 1.0
    check_raw_dataset(_raw(test=20))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({"train": 40, "calibration": 15, "test": 10}, "need 65 examples but the dataset has 60"),
        ({"train": None, "calibration": 50, "test": 20}, "need 70 examples but the dataset has 60"),
        ({"train": 61, "calibration": 0, "test": 1}, "need 62 examples"),
    ],
)
def test_splits_larger_than_the_dataset(sizes, expected):
    with pytest.raises(DataError, match=expected) as info:
        make_splits(_raw(), **sizes)
    assert "reduce dataset.splits" in str(info.value)


def test_splits_larger_than_the_official_sets():
    raw = _raw(n=50, test=20)
    with pytest.raises(DataError, match="test=21 asked for, but the official test set has 20 examples"):
        make_splits(raw, train=10, calibration=5, test=21)
    with pytest.raises(DataError, match="need 51 examples but the training pool has 50"):
        make_splits(raw, train=46, calibration=5, test=10)


@pytest.mark.parametrize("value", [-1, 2.5, "10", True])
@pytest.mark.parametrize("which", ["train", "calibration", "test"])
def test_bad_split_sizes(which, value):
    sizes: dict[str, object] = {"train": 20, "calibration": 5, "test": 5, which: value}
    with pytest.raises(DataError, match=rf"split size {which}={value!r}: expected a non-negative whole number"):
        make_splits(_raw(), **sizes)  # type: ignore[arg-type]


# -- through the registry, as a suite would load it ----------------------------------------------


@pytest.fixture
def user_dataset() -> Iterator[Callable[[Callable[[], object]], str]]:
    """Register a loader under a fresh name; unregistered afterwards."""
    names: list[str] = []

    def add(loader: Callable[[], object]) -> str:
        name = f"reliability-user-set-{len(names)}"
        DATASETS.add(name, loader, source="tests")
        names.append(name)
        return name

    yield add
    for name in names:
        DATASETS.unregister(name)


@pytest.mark.parametrize("kind", ["nan-pixel", "label-too-big", "fractional-label", "negative-label"])
def test_registered_dataset_with_bad_data_fails_on_load(user_dataset, kind):
    damage, expected = BAD[kind]
    name = user_dataset(lambda: damage(_raw()))
    with pytest.raises(DataError) as info:
        load_dataset(name)
    for part in expected:
        assert part in str(info.value)


def test_registered_dataset_returning_the_wrong_type(user_dataset):
    name = user_dataset(lambda: {"x": np.zeros((3, 1, 2, 2))})
    with pytest.raises(DataError, match=rf"dataset '{name}': the loader returned a dict; expected an advbench.data"):
        load_dataset(name)


def test_registered_dataset_too_small_for_the_splits(user_dataset):
    name = user_dataset(lambda: _raw(n=30))
    raw = load_dataset(name)
    with pytest.raises(DataError, match=r"need 40 examples but the dataset has 30; reduce dataset\.splits"):
        make_splits(raw, train=20, calibration=10, test=10)


def test_registrations_are_cleaned_up():
    assert not DATASETS.list("reliability-user-set-*")


@pytest.mark.parametrize("habit", ["float64", "exit"])
def test_a_dataset_loader_is_a_guest(user_dataset, tmp_path, habit):
    """A loader that changes torch's global state (restored) or calls sys.exit stops the run with its name."""
    import torch
    import yaml

    from advbench.config import Suite
    from advbench.errors import AdvbenchError
    from advbench.suite.context import CellContext, RunOptions

    def loader() -> object:
        if habit == "exit":
            sys.exit(0)
        torch.set_default_dtype(torch.float64)
        return _raw()

    name = user_dataset(loader)
    doc = yaml.safe_load((Path(__file__).parent / "suites" / "tiny.yaml").read_text())
    doc["dataset"] = {"name": name}
    with pytest.raises(AdvbenchError, match=f"dataset {name!r}") as info:
        CellContext.create(Suite.model_validate(doc), RunOptions(cache_dir=str(tmp_path), progress=False))
    assert ("sys.exit(0)" if habit == "exit" else "default dtype") in str(info.value)
    assert torch.get_default_dtype() == torch.float32
