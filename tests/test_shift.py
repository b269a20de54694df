"""Seeded shift sets: determinism, hashes, what each corruption does, near/far labels and the registry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from advbench.data import dataset_sizes, load_dataset
from advbench.data.shift import (
    CORRUPTIONS,
    DEFAULT_SHIFTS,
    corrupt,
    make_shift_set,
    parse_shift,
    shift_distance,
    shift_sets,
)
from advbench.errors import DataError


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    raw = load_dataset("digits", size=28)
    return raw.x_train[:64], raw.y_train[:64]


def test_sets_are_seeded_and_hashed(images) -> None:
    x, y = images
    for name in DEFAULT_SHIFTS:
        a, b = make_shift_set(x, y, *parse_shift(name), seed=0), make_shift_set(x, y, *parse_shift(name), seed=0)
        assert a.sha256 == b.sha256 and np.array_equal(a.x, b.x), name
        assert a.x.dtype == np.uint8 and a.x.shape == x.shape and np.array_equal(a.y, y)
        assert a.source_sha256 == b.source_sha256 and a.sha256 != a.source_sha256
        t = a.tensor()
        assert t.dtype.is_floating_point and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    noisy = [make_shift_set(x, y, "gaussian_noise", 3, seed=s) for s in (0, 1)]
    assert noisy[0].sha256 != noisy[1].sha256
    sets = shift_sets(x, y, ["blur:1", "inversion:5"], seed=0, example_ids=np.arange(100, 164))
    assert [s.name for s in sets] == ["blur:1", "inversion:5"]
    assert [s.distance for s in sets] == ["near", "far"]
    assert sets[0].example_ids[0] == 100 and len(sets[0]) == 64


def test_each_corruption_does_what_it_says(images) -> None:
    x, _ = images
    u = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(corrupt(x, "inversion", 5), 1.0 - u)
    c = corrupt(x, "contrast", 1)
    np.testing.assert_allclose(c.mean(axis=(1, 2, 3)), u.mean(axis=(1, 2, 3)), atol=1e-12)  # mean kept
    assert c.std() < 0.6 * u.std()
    np.testing.assert_allclose(
        corrupt(x, "blur", 4), np.clip(ndimage.gaussian_filter(u, (0, 0, 1.5, 1.5), mode="constant"), 0, 1)
    )
    noise = corrupt(x, "gaussian_noise", 1) - u
    inner = (u > 0.3) & (u < 0.7)  # away from the clipping bounds the noise is N(0, 0.08)
    assert abs(noise[inner].std() - 0.08) < 0.01 and abs(noise[inner].mean()) < 0.01
    r = corrupt(x, "rotation", 5)
    assert not np.allclose(r, u) and abs(r.sum() / u.sum() - 1) < 0.2  # mass roughly kept (corners cut)
    # stronger severities move the images further
    dist = [np.abs(corrupt(x, "uniform_noise", s) - u).mean() for s in range(1, 6)]
    assert dist == sorted(dist)


def test_near_far_labels_and_names() -> None:
    assert shift_distance("blur", 5) == "near" and shift_distance("inversion", 1) == "far"
    assert [shift_distance("gaussian_noise", s) for s in range(1, 6)] == ["near"] * 3 + ["far"] * 2
    assert parse_shift("rotation:4") == ("rotation", 4) == parse_shift("rotation-4")
    assert parse_shift("contrast") == ("contrast", 3)
    assert set(CORRUPTIONS) == {"gaussian_noise", "uniform_noise", "blur", "rotation", "contrast", "inversion"}
    with pytest.raises(DataError, match="unknown corruption"):
        parse_shift("snow:2")
    with pytest.raises(DataError, match="severity"):
        parse_shift("blur:9")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        corrupt(np.full((1, 1, 2, 2), 3.0), "blur")


def test_registered_for_a_suites_ood_block() -> None:
    raw = load_dataset("shift", base="digits", base_params={"size": 28}, corruption="rotation", severity=2)
    assert raw.x_train.shape == (1797, 1, 28, 28) and raw.max_value == 255 and raw.x_test is None
    assert raw.name == "digits28-rotation:2" and "near shift rotation:2" in raw.origin and "sha256" in raw.origin
    again = load_dataset("shift", base="digits", base_params={"size": 28}, corruption="rotation", severity=2)
    assert np.array_equal(raw.x_train, again.x_train)
    assert dataset_sizes("shift", {"base": "fashion-mnist"}) == (10000, None)
    assert dataset_sizes("shift", {"base": "digits"}) == (1797, None)
