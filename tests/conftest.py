"""Shared fixtures: small real data and a quickly trained model (plain cross-entropy)."""

from __future__ import annotations

import os

import pytest
import torch

from advbench.data import Splits, load_dataset, make_splits
from advbench.models import Classifier, create_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits_splits() -> Splits:
    """scikit-learn's 8x8 digits: 1,000 train, 200 calibration, 400 test (seed 0)."""
    return make_splits(load_dataset("digits"), train=1000, calibration=200, test=400, seed=0)


def quick_train(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 8, seed: int = 0) -> Classifier:
    """A few epochs of Adam on cross-entropy: a real, reasonably accurate model for tests."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(digits_splits: Splits) -> Classifier:
    """The cnn-digits architecture trained for a few seconds on the digits (about 95% test accuracy)."""
    torch.manual_seed(0)
    model = create_model("cnn-digits", num_classes=10, input_shape=digits_splits.input_shape)
    return quick_train(model, digits_splits.train.x, digits_splits.train.y)
