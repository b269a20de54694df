"""The adaptive feature-space attack on the DkNN."""

from __future__ import annotations

import faiss
import pytest
import torch

import advbench.attacks.dknn_adaptive  # noqa: F401  (registers "dknn-adaptive" until builtin imports it)
from advbench.attacks import ThreatModel, create_attack, list_attacks
from advbench.attacks.base import AttackParamsError
from advbench.attacks.dknn_adaptive import DkNNAdaptive
from advbench.evaluation.dknn import DkNN


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_registered_and_validated() -> None:
    assert "dknn-adaptive" in list_attacks()
    attack = create_attack("dknn-adaptive", steps=5)
    assert isinstance(attack, DkNNAdaptive)
    assert repr(attack) == (
        "DkNNAdaptive(steps=5, step_size=None, random_start=True, layers=None, guide='batch', "
        "n_neighbors=0, reference_size=100)"
    )
    with pytest.raises(AttackParamsError, match="steps"):
        create_attack("dknn-adaptive", steps=0)
    with pytest.raises(AttackParamsError, match="guide"):
        create_attack("dknn-adaptive", guide="train")
    with pytest.raises(AttackParamsError, match="n_neighbors"):
        DkNNAdaptive(n_neighbors=-1)
    with pytest.raises(AttackParamsError, match="layers"):
        DkNNAdaptive(layers=[])


def test_stays_in_ball_and_is_reproducible(digits_model, digits_splits) -> None:
    x, y = digits_splits.test.x[:40], digits_splits.test.y[:40]
    threat = ThreatModel(eps=0.1)
    attack = DkNNAdaptive(steps=5)
    a = attack(digits_model, x, y, threat, generator=torch.Generator().manual_seed(1))
    b = attack(digits_model, x, y, threat, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv)
    assert float(a.linf.max()) <= 0.1 + 1e-6 and a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    # one class only in the batch: no target class, falls back to untargeted PGD on the loss
    same = y == y[0]
    c = attack(digits_model, x[same], y[same], threat, generator=torch.Generator().manual_seed(1))
    assert c.x_adv.shape == x[same].shape


def test_fools_the_dknn(digits_model, digits_splits) -> None:
    s = digits_splits
    dknn = DkNN(digits_model, k=75).fit(s.train.x, s.train.y).calibrate(s.calibration.x, s.calibration.y)
    x, y = s.test.x[:60], s.test.y[:60]
    clean = dknn.predict(x)
    threat = ThreatModel(eps=0.25)
    batch = DkNNAdaptive(steps=10)(digits_model, x, y, threat, generator=torch.Generator().manual_seed(0))
    ref = DkNNAdaptive(steps=10, guide="reference", n_neighbors=10).set_reference(s.train.x, s.train.y)
    near = ref(digits_model, x, y, threat, generator=torch.Generator().manual_seed(0))
    for result in (batch, near):
        adv = dknn.predict(result.x_adv)
        assert adv.accuracy(y) < clean.accuracy(y) - 0.3
        # the representations moved to another class: the DkNN is fooled with non-trivial credibility
        fooled = adv.prediction != y.numpy()
        assert adv.credibility[fooled].mean() > 0.05


def test_reference_guide_needs_a_reference(digits_model, digits_splits) -> None:
    x, y = digits_splits.test.x[:4], digits_splits.test.y[:4]
    with pytest.raises(RuntimeError, match="set_reference"):
        DkNNAdaptive(guide="reference", steps=1)(digits_model, x, y, ThreatModel(eps=0.1))
    attack = DkNNAdaptive(reference_size=3).set_reference(digits_splits.train.x, digits_splits.train.y)
    assert attack._reference is not None and len(attack._reference[1]) == 30
