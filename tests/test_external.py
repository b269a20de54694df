"""advbench.models.external: weights loaded from a checksummed safetensors file are refused when they hold NaN
or infinite values (so a broken model is never blamed on an attack)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from advbench.attacks.base import _same_bits
from advbench.errors import AdvbenchError
from advbench.models.external import load_weights


def test_nan_weights_are_refused_when_loaded_and_never_blamed_on_an_attack(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["weight"][0, 0] = float("nan")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(AdvbenchError, match="NaN or infinite values \\(weight\\)"):
        load_weights(model, path, digest, what="model 'brought'")
    # the attack contract compares bits: the same NaN is unchanged, a moved weight is not
    assert _same_bits(state["weight"], state["weight"].clone())
    assert not _same_bits(state["bias"], state["bias"] + 1)
