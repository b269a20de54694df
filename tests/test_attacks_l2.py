"""The L2 threat model: the ball, PGD-L2 on both backends, minimum-norm attacks filtered at eps."""

from __future__ import annotations

import math

import pytest
import torch

from advbench.attacks import ThreatModel, check_adversarial, create_attack, generate
from advbench.attacks.base import FLOAT_ATOL
from advbench.config import AttackConfig
from advbench.errors import ThreatModelError

N = 40


def test_l2_ball_distance_project_and_label():
    t = ThreatModel(eps=0.5, norm="l2")
    x = torch.full((2, 1, 4, 4), 0.5)
    far = x + torch.full_like(x, 0.25)  # L2 norm 0.25 * 4 = 1.0
    assert t.distance(far, x).tolist() == pytest.approx([1.0, 1.0])
    p = t.project(far, x)
    assert t.distance(p, x).tolist() == pytest.approx([0.5, 0.5])
    assert t.label == "L2 eps 0.5" and ThreatModel(eps=0.1).label == "L-inf eps 0.1"
    assert ThreatModel(eps=3.0, norm="l2").eps == 3.0  # an L2 radius may exceed 1
    with pytest.raises(ValueError, match="'linf' or 'l2'"):
        ThreatModel(eps=0.1, norm="l1")  # type: ignore[arg-type]


def test_check_adversarial_uses_the_l2_norm():
    x = torch.full((3, 1, 4, 4), 0.5)
    spread = x + 0.1  # L-inf 0.1, L2 0.4
    check_adversarial(x, spread, ThreatModel(eps=0.1), attack="a", batch=0)
    with pytest.raises(ThreatModelError, match=r"L2 distance 0\.4"):
        check_adversarial(x, spread, ThreatModel(eps=0.3, norm="l2"), attack="a", batch=0)
    check_adversarial(x, spread, ThreatModel(eps=0.4, norm="l2"), attack="a", batch=0)


@pytest.mark.parametrize("backend", ["torchattacks", "foolbox"])
def test_pgd_l2_stays_in_the_l2_ball_and_succeeds(digits_model, digits_splits, backend):
    x, y = digits_splits.test.x[:N], digits_splits.test.y[:N]
    t = ThreatModel(eps=1.5, norm="l2")
    res = generate(digits_model, create_attack("pgd-l2", backend=backend, steps=10), x, y, t, batch_size=16)
    assert res.l2 is not None and float(res.l2.max()) <= 1.5 + FLOAT_ATOL
    assert float(res.linf.max()) > 1.5 / math.sqrt(x[0].numel())  # a genuinely L2-shaped perturbation
    assert res.success_rate > 0.3


def test_pgd_l2_is_deterministic_and_refuses_linf_threat_mismatch(digits_model, digits_splits):
    x, y = digits_splits.test.x[:8], digits_splits.test.y[:8]
    t = ThreatModel(eps=1.0, norm="l2")
    a = generate(digits_model, create_attack("pgd-l2", steps=5), x, y, t, seed=3)
    b = generate(digits_model, create_attack("pgd-l2", steps=5), x, y, t, seed=3)
    assert torch.equal(a.x_adv, b.x_adv)
    with pytest.raises(ThreatModelError, match="L-inf attack and the threat model is L2 eps 1"):
        generate(digits_model, create_attack("pgd", steps=2), x, y, t)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("foolbox.L2CarliniWagnerAttack", {"steps": 30, "binary_search_steps": 3}),
        ("torchattacks.CW", {"steps": 30, "c": 1.0, "lr": 0.05}),
        ("foolbox.L2DeepFoolAttack", {"steps": 20}),
        ("torchattacks.DeepFool", {"steps": 20}),
    ],
)
def test_minimum_norm_attacks_are_filtered_at_eps(digits_model, digits_splits, name, params):
    x, y = digits_splits.test.x[:N], digits_splits.test.y[:N]
    eps = 1.0
    attack = create_attack(name, **params)
    assert attack.minimum_norm and attack.norm == "l2"
    res = generate(digits_model, attack, x, y, ThreatModel(eps=eps, norm="l2"), batch_size=20)
    assert res.l2 is not None and float(res.l2.max()) <= eps + FLOAT_ATOL
    assert res.raw_norm is not None and res.raw_norm.shape == (N,)
    found = res.raw_norm[~torch.isnan(res.raw_norm)]
    assert len(found) > 0  # the attack fooled the model somewhere, at some size
    # success at eps is exactly: fooled (or misclassified clean) with a perturbation within eps
    clean_wrong = digits_model(x).argmax(1) != y
    within = (~torch.isnan(res.raw_norm)) & (res.raw_norm <= eps)
    assert torch.equal(res.success, within | clean_wrong)
    # examples beyond eps revert to the clean input
    beyond = (~within).nonzero().flatten()
    assert torch.equal(res.x_adv[beyond], x[beyond])


def test_suite_entry_norm_and_radii():
    a = AttackConfig(name="pgd-l2", norm="l2", eps=[0.5, 2])
    assert a.eps == [0.5, 2.0] and a.norm == "l2"
    assert AttackConfig(name="pgd", eps=["8/255"]).norm == "linf"
    with pytest.raises(ValueError, match="write 2/255"):
        AttackConfig(name="pgd", eps=[2])
