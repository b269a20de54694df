"""The adaptive attack on the DkNN: contract, knowledge, and strength against the other attacks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import advbench.attacks.builtin  # noqa: F401  (registers the built-ins)
from advbench.attacks import ThreatModel, create_attack, generate, list_attacks
from advbench.attacks.base import AttackParamsError
from advbench.attacks.dknn_adaptive import (
    DkNNAdaptive,
    DkNNKnowledge,
    apgd_checkpoints,
    apgd_minimise,
    dknn_badness,
)
from advbench.data import Splits
from advbench.evaluation.dknn import DkNN
from advbench.models import Classifier


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def dknn(digits_model: Classifier, digits_splits: Splits) -> DkNN:
    s = digits_splits
    return DkNN(digits_model, k=25).fit(s.train.x, s.train.y).calibrate(s.calibration.x, s.calibration.y)


def test_registered_validated_and_costed() -> None:
    assert "dknn-adaptive" in list_attacks()
    attack = create_attack("dknn-adaptive", steps=5)
    assert isinstance(attack, DkNNAdaptive)
    assert "adaptive-dknn" in attack.properties and "iterative" in attack.properties
    assert repr(attack).startswith("DkNNAdaptive(steps=5, step_size=None, n_targets=2, restarts=2")
    assert DkNNAdaptive.passes_per_example({"steps": 5}) == 2 * 2 * 5
    assert DkNNAdaptive.passes_per_example({"steps": 7, "n_targets": 3, "restarts": 1}) == 21
    for bad in ({"steps": 0}, {"n_targets": 0}, {"restarts": 0}, {"n_guides": 0}, {"temperature": 0.0}):
        with pytest.raises(AttackParamsError, match=next(iter(bad))):
            create_attack("dknn-adaptive", **bad)
    with pytest.raises(AttackParamsError, match="guide"):
        create_attack("dknn-adaptive", guide="batch")


def test_needs_knowledge(digits_model, digits_splits) -> None:
    x, y = digits_splits.test.x[:4], digits_splits.test.y[:4]
    with pytest.raises(RuntimeError, match="set_knowledge"):
        DkNNAdaptive(steps=1)(digits_model, x, y, ThreatModel(eps=0.1))


def test_knowledge_from_dknn_checks_the_training_set(dknn, digits_splits) -> None:
    s = digits_splits
    know = DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y)
    assert know.layers == dknn.layers and know.k == 25 and know.num_classes == 10
    np.testing.assert_array_equal(know.p_values(s.test.x[:5]), dknn.predict(s.test.x[:5]).p_values)
    with pytest.raises(ValueError, match="training set"):
        DkNNKnowledge.from_dknn(dknn, s.test.x, s.test.y)
    with pytest.raises(ValueError, match="calibrated"):
        DkNNKnowledge.from_dknn(DkNN(dknn.model, k=25).fit(s.train.x, s.train.y), s.train.x, s.train.y)


def test_badness_orders_wrong_before_correct() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.1], [0.1, 0.3], [0.1, 0.8]])
    bad = dknn_badness(p, np.array([0, 0, 0, 0]))
    # correct with p_y 0.9 < correct with p_y 0.2 < wrong with credibility 0.3 < wrong with 0.8
    assert list(np.argsort(bad)) == [0, 1, 2, 3]


def test_stays_in_ball_reproducible_and_never_worse_than_clean(dknn, digits_model, digits_splits) -> None:
    s = digits_splits
    x, y = s.test.x[:40], s.test.y[:40]
    threat = ThreatModel(eps=0.1)
    attack = DkNNAdaptive(steps=3).set_knowledge(DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y))
    a = attack(digits_model, x, y, threat, generator=torch.Generator().manual_seed(1))
    b = attack(digits_model, x, y, threat, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv)
    assert float(a.linf.max()) <= 0.1 + 1e-6 and a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    # the clean input is a candidate: no example is scored better by the real DkNN than when clean
    clean = dknn_badness(dknn.predict(x).p_values, y.numpy())
    adv = dknn_badness(dknn.predict(a.x_adv).p_values, y.numpy())
    assert np.all(adv >= clean)


# -- strength: at most the DkNN accuracy of every other attack ----------------------------------

_OTHERS = (("fgsm", {}), ("bim", {"steps": 10}), ("pgd", {"steps": 10}))


def _dknn_accuracies(splits: Splits, *, seed: int, alpha: float, n: int, eps_grid: tuple[float, ...]) -> dict:
    """DkNN accuracy of a quick-suite model under every attack, as the quick suite builds it."""
    from advbench.config import RecipeConfig
    from advbench.training import init_model, train_model

    snnl = {"alpha": alpha} if alpha == 0 else {"alpha": alpha, "temperature": "learned"}
    recipe = RecipeConfig(epochs=8, batch_size=64, optimizer="adam", lr=0.003, snnl=snnl)
    model = init_model(
        "cnn-digits", params={}, num_classes=10, input_shape=splits.input_shape, seed=seed, x_train=splits.train.x
    )
    train_model(model, splits.train.x, splits.train.y, recipe, seed=seed, probe=None)
    model.eval()
    dk = DkNN(model, k=25).fit(splits.train.x, splits.train.y).calibrate(splits.calibration.x, splits.calibration.y)
    know = DkNNKnowledge.from_dknn(dk, splits.train.x, splits.train.y)
    x, y = splits.test.x[:n], splits.test.y[:n]
    out = {}
    for eps in eps_grid:
        for name, params in (*_OTHERS, ("dknn-adaptive", {"steps": 10})):
            attack = create_attack(name, **params)
            if "adaptive-dknn" in attack.properties:
                attack.set_knowledge(know)
            res = generate(model, attack, x, y, ThreatModel(eps=eps), seed=seed)
            out[(name, eps)] = dk.predict(res.x_adv).accuracy(y)
    return out


def _assert_strongest(acc: dict, eps_grid: tuple[float, ...], what: str) -> None:
    for eps in eps_grid:
        adaptive = acc[("dknn-adaptive", eps)]
        for name, _ in _OTHERS:
            assert adaptive <= acc[(name, eps)], (
                f"{what} eps={eps}: dknn-adaptive leaves DkNN accuracy {adaptive:.3f}, above {name}'s "
                f"{acc[(name, eps)]:.3f}"
            )


@pytest.mark.parametrize("alpha", [0.0, -0.1], ids=["baseline", "entangled"])
def test_adaptive_is_the_strongest_on_the_dknn(digits_splits, alpha) -> None:
    """Quick-suite models (baseline and entangled), one seed, 150 examples, eps 0.1 and 0.2."""
    eps_grid = (0.1, 0.2)
    acc = _dknn_accuracies(digits_splits, seed=0, alpha=alpha, n=150, eps_grid=eps_grid)
    _assert_strongest(acc, eps_grid, f"alpha={alpha} seed=0")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.1], ids=["baseline", "entangled", "disentangled"])
def test_adaptive_is_the_strongest_on_the_dknn_more_seeds(digits_splits, alpha, seed) -> None:
    eps_grid = (0.05, 0.1, 0.2)
    acc = _dknn_accuracies(digits_splits, seed=seed, alpha=alpha, n=300, eps_grid=eps_grid)
    _assert_strongest(acc, eps_grid, f"alpha={alpha} seed={seed}")


@pytest.mark.parametrize("width", [7, 300, 5000])
def test_guide_distances_are_the_direct_norm_and_its_gradient(width: int) -> None:
    from advbench.attacks.dknn_adaptive import GuideSet, guide_distances

    gen = torch.Generator().manual_seed(width)
    # features of the size the attack sees: far from 0, guides and iterate within a neighbourhood of the centre
    centre = 20 + torch.randn(13, width, generator=gen)
    points = centre[:, None, :] + torch.randn(13, 9, width, generator=gen)
    x = centre + 0.3 * torch.randn(13, width, generator=gen)
    x[2] = points[2, 4]  # on a guide: distance 0, where the norm's gradient is defined as 0
    x[5] = centre[5]  # at the centre (the attack's first step)
    weights = torch.rand(13, 9, generator=gen)
    h = x.double().requires_grad_(True)
    direct = (h[:, None, :] - points.double()).norm(dim=2)
    (g_direct,) = torch.autograd.grad((weights.double() * direct).sum(), h)
    assert direct[2, 4] == 0
    guides = GuideSet.around(centre, points)
    h = x.clone().requires_grad_(True)
    got = guide_distances(h, guides)
    (g_got,) = torch.autograd.grad((weights * got).sum(), h)
    assert got[2, 4] == 0
    # float32 rounding of the neighbourhood's size, not of the features' (|x| ~ 20 * sqrt(width))
    torch.testing.assert_close(got.double(), direct.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got.double(), g_direct, rtol=1e-4, atol=1e-5)


def test_guide_distances_leave_the_guides_constant() -> None:
    from advbench.attacks.dknn_adaptive import GuideSet, guide_distances

    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(4, 6, generator=gen)
    raw = torch.randn(4, 3, 6, generator=gen)
    guides = GuideSet.around(centre, raw)
    before = guides.points.clone()
    h = centre.clone().requires_grad_(True)
    guide_distances(h, guides).sum().backward()
    assert torch.equal(guides.points, before) and not guides.points.requires_grad
    torch.testing.assert_close(guides.points + centre[:, None], raw)


def test_training_features_from_the_dknn_index_are_the_ones_the_attack_would_compute(
    dknn, digits_model, digits_splits
) -> None:
    from advbench.attacks.dknn_adaptive import _flat_features

    s = digits_splits
    know = DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y)
    with torch.no_grad():
        computed = _flat_features(digits_model, s.train.x, list(know.layers))
    assert know.train_features is not None
    for layer in know.layers:
        stored = know.train_features(layer)
        assert stored is not None
        np.testing.assert_array_equal(stored, computed[layer].numpy())  # bit for bit, so results do not move
    approx = DkNN(digits_model, k=25, index="hnsw").fit(s.train.x[:300], s.train.y[:300])
    assert all(approx.stored_features(layer) is None for layer in approx.layers)


# -- the APGD schedule (apgd_minimise) ------------------------------------------------------------------------


def test_apgd_checkpoints_are_the_reference_codes():
    """Croce & Hein (2020), section 3.2, for 100 iterations: 22, 41, 57, 70, 80, 87, 93, 99."""
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20)[:3] == [4, 7, 9] and apgd_checkpoints(1) == [1]


def test_apgd_finds_the_constrained_minimum_and_stays_in_the_ball():
    """A per-example quadratic whose minimum lies outside the ball: the best point is its projection."""
    torch.manual_seed(0)
    x = torch.rand(16, 1, 6, 6) * 0.8 + 0.1
    target = (x + torch.randn_like(x) * 0.2).clamp(0, 1)
    threat = ThreatModel(eps=0.05)
    calls = []

    def loss_of(z: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return ((z - target) ** 2).flatten(1).sum(1)

    best = apgd_minimise(loss_of, x, x.clone(), threat, steps=100)
    assert len(calls) == 101  # the start and every iterate
    projection = threat.project(target, x)
    assert (best - x).abs().max() <= 0.05 + 1e-6 and best.min() >= 0 and best.max() <= 1
    assert (best - projection).abs().max() < 0.05 / 16  # within a small fraction of the radius
    assert (loss_of(best) <= loss_of(x)).all()


def test_apgd_returns_each_examples_best_point_never_worse_than_its_start():
    torch.manual_seed(1)
    x = torch.rand(8, 3)
    noisy = torch.randn(8, 3)

    def loss_of(z: torch.Tensor) -> torch.Tensor:  # rugged: sign steps oscillate
        return torch.sin(40 * (z * noisy).sum(1)) + (z**2).sum(1)

    start = x.clone()
    best = apgd_minimise(loss_of, x, start, ThreatModel(eps=0.1), steps=30)
    assert (loss_of(best) <= loss_of(start)).all()


def test_the_schedule_is_a_checked_parameter():
    assert create_attack("dknn-adaptive", schedule="constant").schedule == "constant"
    assert create_attack("dknn-adaptive").schedule == "apgd"
    with pytest.raises(AttackParamsError, match="schedule: expected one of apgd, constant"):
        create_attack("dknn-adaptive", schedule="adam")


def test_the_objective_is_a_checked_parameter():
    assert create_attack("dknn-adaptive").objective == "label"
    assert create_attack("dknn-adaptive", objective="credibility").objective == "credibility"
    with pytest.raises(AttackParamsError, match="objective: expected one of label, credibility"):
        create_attack("dknn-adaptive", objective="auroc")


def test_credibility_objective_stays_in_ball_reproducible_and_never_worse_than_clean(
    dknn, digits_model, digits_splits
) -> None:
    s = digits_splits
    x, y = s.test.x[:40], s.test.y[:40]
    know = DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y)
    attack = DkNNAdaptive(steps=3, objective="credibility").set_knowledge(know)
    a = attack(digits_model, x, y, ThreatModel(eps=0.1), generator=torch.Generator().manual_seed(1))
    b = attack(digits_model, x, y, ThreatModel(eps=0.1), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv)
    assert float(a.linf.max()) <= 0.1 + 1e-6 and a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    clean = dknn_badness(dknn.predict(x).p_values, y.numpy())
    assert np.all(dknn_badness(dknn.predict(a.x_adv).p_values, y.numpy()) >= clean)


# -- against a DkNN whose worst case brute force finds ------------------------------------------


@pytest.fixture(scope="module")
def plane() -> tuple[Classifier, DkNN, DkNNKnowledge, torch.Tensor, torch.Tensor]:
    """A DkNN on a two-pixel world: three classes of blobs in [0, 1]^2, a small MLP, k = 7."""
    from advbench.models import create_model

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.25, 0.3], [0.75, 0.3], [0.5, 0.75]])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        x = (centres[y] + 0.09 * torch.randn(n, 2, generator=gen)).clamp(0, 1)
        return x.view(n, 1, 1, 2), y

    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(1, 1, 2), hidden=(16, 16))
    x_train, y_train = draw(600)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    x_cal, y_cal = draw(150)
    dk = DkNN(model, k=7).fit(x_train, y_train).calibrate(x_cal, y_cal)
    x_test, y_test = draw(30)
    return model, dk, DkNNKnowledge.from_dknn(dk, x_train, y_train), x_test, y_test


_PLANE_EPS = 0.2


@pytest.fixture(scope="module")
def plane_worst(plane) -> np.ndarray:
    """Per test example, the worst case (:func:`dknn_badness`) over a 61 x 61 grid of its eps-ball, scored by the
    real DkNN: brute force, which a two-pixel world allows."""
    _, dk, _, x, y = plane
    axis = torch.linspace(-_PLANE_EPS, _PLANE_EPS, 61)
    offsets = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).view(-1, 2)
    worst = np.empty(len(y))
    for i in range(len(y)):
        cand = (x[i].view(1, 2) + offsets).clamp(0, 1).view(-1, 1, 1, 2)
        worst[i] = dknn_badness(dk.predict(cand).p_values, np.full(len(cand), int(y[i]))).max()
    return worst


def _plane_attack(plane, **params) -> np.ndarray:
    model, dk, know, x, y = plane
    attack = DkNNAdaptive(**({"steps": 30, "restarts": 3} | params)).set_knowledge(know)
    res = attack(model, x, y, ThreatModel(eps=_PLANE_EPS), generator=torch.Generator().manual_seed(0))
    assert float(res.linf.max()) <= _PLANE_EPS + 1e-6
    return dknn_badness(dk.predict(res.x_adv).p_values, y.numpy())


def test_fools_a_small_dknn_wherever_brute_force_does_and_aims_at_its_credibility(plane, plane_worst) -> None:
    """Brute force over each ball finds a wrong label of credibility >= 0.05 for 20 of 30 examples, of
    credibility 1 (every neighbour of the wrong class in every layer) for 18. Both objectives fool the DkNN on all
    20; the detection-aware one, refining its guides around its best point, gets closer to the credibility brute
    force reaches (measured: mean gap 0.146 against 0.197), and with 3k guides per layer reaches it."""
    clear = plane_worst >= 1.05
    assert clear.sum() >= 10, "the world is too easy or too hard to test anything"
    label = _plane_attack(plane, objective="label")
    credible = _plane_attack(plane, objective="credibility")
    runs = {"label": label, "credibility": credible}
    for name, got in runs.items():
        assert (got[clear] >= 1).all(), f"{name}: missed examples {np.where(clear & (got < 1))[0]}"
    gap = {name: float((plane_worst - got)[clear].mean()) for name, got in runs.items()}
    assert gap["credibility"] < gap["label"], gap
    wide = _plane_attack(plane, objective="credibility", n_guides=3 * 7)
    assert float((plane_worst - wide)[clear].mean()) <= 0.02
    assert (wide[plane_worst >= 2] >= 2).all()


# -- warm starts from the other attacks' examples ------------------------------------------------


def test_warm_starts_are_candidates_and_starts(dknn, digits_model, digits_splits) -> None:
    """Per example, the attack with warm starts is at least as bad for the DkNN as each warm start (they are
    candidates), whatever batch the example falls in; the starts are found by the inputs' pixels."""
    s = digits_splits
    x, y = s.test.x[:30], s.test.y[:30]
    threat = ThreatModel(eps=0.1)
    know = DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y)
    pgd = generate(digits_model, create_attack("pgd", steps=10), x, y, threat, seed=0).x_adv
    for objective in ("label", "credibility"):
        attack = DkNNAdaptive(steps=2, restarts=1, objective=objective).set_knowledge(know)
        attack.set_warm_starts(x, [pgd])
        res = generate(digits_model, attack, x, y, threat, batch_size=7, seed=0)  # batches that cut the set
        got = dknn_badness(dknn.predict(res.x_adv).p_values, y.numpy())
        warm = dknn_badness(dknn.predict(pgd).p_values, y.numpy())
        assert np.all(got >= warm), objective
        assert float(res.linf.max()) <= 0.1 + 1e-6


def test_warm_starts_must_match_the_inputs(dknn, digits_model, digits_splits) -> None:
    s = digits_splits
    x, y = s.test.x[:6], s.test.y[:6]
    attack = DkNNAdaptive(steps=1, restarts=1).set_knowledge(DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y))
    with pytest.raises(ValueError, match="shaped like x"):
        attack.set_warm_starts(x, [x[:3]])
    attack.set_warm_starts(x[:3], [x[:3]])
    with pytest.raises(ValueError, match="not among those given to set_warm_starts"):
        attack(digits_model, x, y, ThreatModel(eps=0.1), generator=torch.Generator().manual_seed(0))


def test_a_warm_started_attack_cell_reads_the_other_attacks_at_its_eps() -> None:
    """The plan: the attack depends on (and is keyed by) every other attack at its eps and norm without warm_start,
    and comes after them; a suite without warm_start keeps its keys (the field is not in the attack's key)."""
    from pathlib import Path

    import yaml

    from advbench.config import Suite
    from advbench.suite.context import CellContext, RunOptions

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "quick.yaml").read_text())
    for a in doc["attacks"]:
        a.pop("warm_start", None)

    def plan(d: dict):
        opts = RunOptions(cache_dir="/tmp/unused", progress=False, threads=1)
        return CellContext.create(Suite.model_validate(d), opts).plan

    cold = plan(doc)
    credible = next(a for a in doc["attacks"] if a.get("label") == "dknn-credible")
    credible["warm_start"] = True
    warm = plan(doc)
    cell = warm.find("attack", seed=0, model="baseline", attack="dknn-credible", eps=0.2)
    others = [
        warm.find("attack", seed=0, model="baseline", attack=k, eps=0.2)
        for k in ("fgsm", "bim", "pgd", "dknn-adaptive")
    ]
    assert cell.spec["warm_starts"] == {o.params["attack"]: o.key for o in others}
    assert {o.key for o in others} <= set(cell.deps)
    order = [c.key for c in warm.cells]
    assert all(order.index(o.key) < order.index(cell.key) for o in others)
    # only the warm-started attack's cells (and what reads them) change keys
    changed = {c.label for c in cold.cells} - {c.label for c in warm.cells if c.key in {k.key for k in cold.cells}}
    assert changed and all("dknn-credible" in label or "dknn score" in label for label in changed), changed
    assert create_attack("dknn-adaptive").set_warm_starts  # accepts them


def test_warm_start_is_refused_for_an_attack_that_takes_none() -> None:
    from pathlib import Path

    import yaml

    from advbench.errors import ConfigError
    from advbench.suite.validate import validate_suite_dict

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "quick.yaml").read_text())
    doc["attacks"][0]["warm_start"] = True  # fgsm
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.warm_start.*takes no warm starts"):
        validate_suite_dict(doc, source="quick.yaml")
