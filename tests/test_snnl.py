"""The Soft Nearest Neighbor Loss against a brute-force double loop and configurations of known entanglement."""

from __future__ import annotations

import math

import pytest
import torch

from advbench.training import (
    SNNL_EPS,
    SoftNearestNeighborLoss,
    entanglement,
    floor_rate,
    pairwise_distances,
    snnl,
)


def brute_force_snnl(x: torch.Tensor, y: torch.Tensor, T: float, distance: str, eps: float = SNNL_EPS) -> float:
    """The formula of docs/method.md (section 1), one point at a time, in float64, with eps inside the log."""
    x = x.reshape(len(x), -1).to(torch.float64)
    b = len(x)
    total = 0.0
    for i in range(b):
        num = den = 0.0
        for j in range(b):
            if j == i:
                continue
            if distance == "euclidean":
                d = float(((x[i] - x[j]) ** 2).sum())
            else:
                d = 1.0 - float(torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm()))
            w = math.exp(-d / T)
            den += w
            if y[j] == y[i]:
                num += w
        total += -math.log(eps + num / den)
    return total / b


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("T", [0.3, 2.0, 50.0])
def test_matches_brute_force(distance, T):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (24,), generator=g)
    y[0] = 9  # a point with no same-class partner
    got = float(snnl(x, y, T, distance=distance))
    assert got == pytest.approx(brute_force_snnl(x, y, T, distance), abs=1e-5, rel=1e-5)


def test_float32_matches_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 300, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    assert float(snnl(x, y, 100.0)) == pytest.approx(float(snnl(x.double(), y, 100.0)), rel=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_gradcheck_inputs_and_temperature(distance):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])  # label 3 has no partner
    assert torch.autograd.gradcheck(lambda a, b: snnl(a, y, b, distance=distance), (x, t))


def test_pairwise_distance_gradient_matches_autograd():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad((pairwise_distances(x) * w).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = ((x2[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    (gref,) = torch.autograd.grad((ref * w).sum(), x2)
    torch.testing.assert_close(gx, gref)
    torch.testing.assert_close(pairwise_distances(x), ref.detach())


def test_separated_clusters_are_near_zero():
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    y = torch.arange(3).repeat_interleave(10)
    x = centres[y] + 0.1 * torch.randn(30, 2, generator=g)
    assert abs(float(snnl(x, y, 1.0))) < 1e-4
    value, _ = entanglement(x, y)
    assert abs(value) < 1e-4


@pytest.mark.parametrize("classes,per_class", [(2, 5), (10, 8)])
def test_identical_points_give_log_class_ratio(classes, per_class):
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.ones(len(y), 6)
    b = len(y)
    expected = -math.log(SNNL_EPS + (per_class - 1) / (b - 1))
    for T in (1e-3, 1.0, 1e3):
        assert float(snnl(x, y, T)) == pytest.approx(expected, abs=1e-6)
    # ~ log(number of classes) when the batch is large: the class ratio
    assert expected == pytest.approx(math.log((b - 1) / (per_class - 1)), rel=1e-3)


def test_rows_without_a_same_class_partner_sit_at_minus_log_eps():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.arange(6)  # nobody has a partner
    value = snnl(x, y, 1.0)
    assert value.item() == pytest.approx(-math.log(SNNL_EPS), abs=1e-9)
    assert value.item() == pytest.approx(11.5129, abs=1e-4)
    value.backward()
    assert torch.count_nonzero(x.grad) == 0
    # mixed: the one lonely row adds (-log eps) / b to the mean of the others
    y2 = torch.tensor([0, 0, 1, 1, 2, 2, 7])
    x2 = torch.randn(7, 3, dtype=torch.float64)
    full = float(snnl(x2, y2, 1.0))
    assert full == pytest.approx(brute_force_snnl(x2, y2, 1.0, "euclidean"), abs=1e-9)


def test_wide_layer_small_temperature_is_finite_and_monitored():
    """T = 100 on a 6,272-wide layer: the reference computation underflows; ours stays informative."""
    g = torch.Generator().manual_seed(6)
    x = (3 * torch.rand(32, 6272, generator=g)).requires_grad_(True)
    y = torch.arange(32) % 4
    value = snnl(x, y, 100.0)
    assert torch.isfinite(value) and value.item() < -math.log(SNNL_EPS)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    d = pairwise_distances(x.detach())
    assert floor_rate(d, 100.0) == 1.0
    assert floor_rate(d, float(d.max())) == 0.0


def test_entanglement_is_the_minimum_and_scale_free():
    g = torch.Generator().manual_seed(7)
    y = torch.arange(4).repeat_interleave(12)
    x = torch.randn(48, 20, generator=g) + 0.8 * torch.nn.functional.one_hot(y, 20).float()
    value, best_T = entanglement(x, y)
    for T in torch.logspace(-3, 4, 30).tolist():
        assert value <= float(snnl(x.double(), y, T)) + 1e-6
    assert float(snnl(x.double(), y, best_T)) == pytest.approx(value, abs=1e-6)
    # scaling the representation by c scales squared distances by c^2: same value, T times c^2
    v2, T2 = entanglement(100 * x, y)
    assert v2 == pytest.approx(value, abs=1e-6)
    assert T2 == pytest.approx(best_T * 1e4, rel=1e-2)
    # an explicit grid
    v3, T3 = entanglement(x, y, grid=[best_T])
    assert (v3, T3) == (pytest.approx(value), best_T)


def test_entanglement_at_any_width():
    g = torch.Generator().manual_seed(8)
    y = torch.arange(10).repeat_interleave(10)
    for width in (2, 128, 6272):
        x = (
            torch.rand(100, width, generator=g)
            + torch.nn.functional.one_hot(y, width if width >= 10 else 10)[:, :width].float()
        )
        value, T = entanglement(x, y)
        assert math.isfinite(value) and 0 <= value < math.log(10) + 0.1 and T > 0


def test_module_form_learns_its_temperature():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(40, 5, generator=g)
    y = torch.arange(40) % 4
    loss = SoftNearestNeighborLoss(temperature=100.0, learn_temperature=True)
    assert "learn_temperature=True" in repr(loss)
    opt = torch.optim.Adam(loss.parameters(), lr=0.2)
    start = loss(x, y).item()
    for _ in range(25):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert loss(x, y).item() < start
    fixed = SoftNearestNeighborLoss(temperature=2.0)
    assert list(fixed.parameters()) == []
    assert float(fixed(x, y)) == pytest.approx(float(snnl(x, y, 2.0)), rel=1e-6)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        snnl(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="distance"):
        snnl(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), 1.0, distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        snnl(torch.zeros(3, 3), torch.zeros(4, dtype=torch.long), 1.0)
