"""The validation split: disjoint from train, calibration and test; absent by default with unchanged splits."""

from __future__ import annotations

import numpy as np
import pytest
from test_data import _raw

from advbench.data import load_dataset, make_splits
from advbench.errors import DataError

# hashes of make_splits before the validation split existed (computed on the parent commit)
_BEFORE = {
    "digits train=1000 cal=200 test=400 seed=0": {
        "train": "4495ffbf0eb666e1825c0fc2949b1f445f5af6697c8b6986b3ad0d666acb4ea3",
        "calibration": "8de37641146c0c590630981716d4286f147ff61ef7dc05aea065159403e14d98",
        "test": "34739b478188765b07af5d4c4ec93d1cac2d0fb6859e02a1f3a2e1b38eab0710",
    },
    "digits cal=200 seed=3": {
        "train": "1c3238ad69c026d3c3e0253c222959c678a427ba3d7844cbda9c1d6e225efa47",
        "calibration": "6702e8bfc6fa5aaab81af23323e10c78857ba8d7bca44e5bb890970e19eee3f6",
        "test": "b45ca5b1ffa6486fffe67ec0aabb1b5213836f4da60d1a351e8a479a1311c346",
    },
    "official test train=30 cal=10 test=15 seed=1": {
        "train": "11142cfb333196e07041b6695994ea465709c4c735dfd3e93f2e935441857547",
        "calibration": "514b31f9618e1c5b5fe9e01ab31020da0cb79e29619a1c5cf349abaa0eb44113",
        "test": "d8b8ddcb9d27a429f997dc79844ff28c83d23d342d01c4b660c6c33272798511",
    },
    "official test cal=10 seed=2": {
        "train": "3b89390814503b25fd964094f77be74e037ddd45ba3b2c97a4015cf0d6ba37d7",
        "calibration": "0fd3aaf6318a876cad14abbe466758377ccfebde19c67e62fb694acf5233334c",
        "test": "ea780c7a92325111f286049f8af8072636a2ac17fa873d6af569494d54a147ec",
    },
}


def test_default_splits_are_byte_identical_to_before():
    digits = load_dataset("digits")
    got = {
        "digits train=1000 cal=200 test=400 seed=0": make_splits(digits, train=1000, calibration=200, test=400, seed=0),
        "digits cal=200 seed=3": make_splits(digits, calibration=200, seed=3),
        "official test train=30 cal=10 test=15 seed=1": make_splits(
            _raw(60, test=20), train=30, calibration=10, test=15, seed=1
        ),
        "official test cal=10 seed=2": make_splits(_raw(60, test=20), calibration=10, seed=2),
    }
    for key, splits in got.items():
        assert splits.validation is None
        assert splits.hashes == _BEFORE[key], key
    # validation=0 spelled out is the default
    assert make_splits(digits, calibration=200, seed=3, validation=0).hashes == _BEFORE["digits cal=200 seed=3"]


@pytest.mark.parametrize("official_test", [True, False])
@pytest.mark.parametrize("train", [30, None])
def test_validation_is_disjoint_and_leaves_fixed_splits_alone(official_test, train):
    raw = _raw(80, test=20 if official_test else None)
    base = make_splits(raw, train=train, calibration=10, test=10, seed=4)
    s = make_splits(raw, train=train, calibration=10, test=10, seed=4, validation=12)
    assert s.validation is not None and len(s.validation) == 12 and "validation" in s.hashes
    pool = [set(s.train.indices), set(s.calibration.indices), set(s.validation.indices)]
    if not official_test:
        pool.append(set(s.test.indices))
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            assert not pool[i] & pool[j]
    # calibration and test never move; the training set is unchanged when its size is fixed
    assert s.hashes["calibration"] == base.hashes["calibration"] and s.hashes["test"] == base.hashes["test"]
    if train is not None:
        assert s.hashes["train"] == base.hashes["train"]
    else:
        assert len(s.train) == len(base.train) - 12 and set(s.train.indices) < set(base.train.indices)
    assert np.array_equal(s.validation.y.numpy(), raw.y_train[s.validation.indices])


def test_validation_too_large_or_negative():
    with pytest.raises(DataError, match="validation=60"):
        make_splits(_raw(60, test=20), calibration=10, validation=60)
    with pytest.raises(DataError, match="validation=-1"):
        make_splits(_raw(60, test=20), calibration=10, validation=-1)
