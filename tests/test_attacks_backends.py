"""torchattacks and foolbox backends of the built-ins agree on the same trained model.

1,000 examples: the digits test, calibration and (the first 400) training images, attacked on the
session's cnn-digits model. Attacking training images is fine here: the test compares two
implementations of one attack, not the model's robustness.
"""

from __future__ import annotations

import pytest
import torch

from advbench.attacks import ThreatModel, create_attack, generate


@pytest.fixture(scope="module")
def thousand(digits_splits):
    s = digits_splits
    x = torch.cat([s.test.x, s.calibration.x, s.train.x])[:1000]
    y = torch.cat([s.test.y, s.calibration.y, s.train.y])[:1000]
    return x, y


def _both(model, name, params, x, y, eps):
    threat = ThreatModel(eps=eps)
    return [
        generate(model, create_attack(name, backend=b, **params), x, y, threat, batch_size=500, seed=0)
        for b in ("torchattacks", "foolbox")
    ]


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_fgsm_examples_identical_across_backends(digits_model, thousand, eps):
    x, y = thousand
    ta, fb = _both(digits_model, "fgsm", {}, x, y, eps)
    assert torch.equal(ta.x_adv, fb.x_adv)
    assert torch.equal(ta.success, fb.success)


@pytest.mark.parametrize("name", ["bim", "pgd"])
def test_iterative_success_rates_within_one_point(digits_model, thousand, name):
    x, y = thousand
    ta, fb = _both(digits_model, name, {"steps": 10}, x, y, 0.1)
    assert len(ta.success) == 1000
    assert 0.1 < ta.success_rate < 0.9  # a regime where a difference would show
    assert abs(ta.success_rate - fb.success_rate) <= 0.01, (ta.success_rate, fb.success_rate)
