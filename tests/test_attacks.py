"""The attack contract, run over the registry: built-ins and a sample of the wrapped library attacks."""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advbench.attacks import (
    ATTACKS,
    Attack,
    AttackParamsError,
    ThreatModel,
    check_adversarial,
    create_attack,
    generate,
    list_attacks,
    register_attack,
)
from advbench.attacks.base import FLOAT_ATOL, batch_generator
from advbench.attacks.dknn_adaptive import DkNNKnowledge
from advbench.errors import ThreatModelError, UnknownNameError
from advbench.evaluation.dknn import DkNN

EPS = 0.1
THREAT = ThreatModel(eps=EPS)

#: the built-ins, each with both backends (taken from the registry itself)
BUILTINS = [e.name for e in ATTACKS.entries() if e.source == "advbench" and "." not in e.name]


def _backends(name: str) -> tuple[str | None, ...]:
    """Both library backends for attacks that take ``backend``; none for single-implementation ones."""
    takes_backend = "backend" in inspect.signature(ATTACKS.get(name)).parameters
    return ("torchattacks", "foolbox") if takes_backend else (None,)


BUILTIN_CASES = [
    (n, {**({"backend": b} if b else {}), **({"steps": 3} if n != "fgsm" else {})})
    for n in BUILTINS
    for b in _backends(n)
]
#: a representative sample of the wrapped attacks: L-inf, L2, L0/none (projected), random, minimisation
WRAPPED_CASES = [
    ("torchattacks.MIFGSM", {"steps": 3}),
    ("torchattacks.FFGSM", {}),
    ("torchattacks.TPGD", {"steps": 3}),
    ("torchattacks.APGD", {"steps": 3}),
    ("torchattacks.Square", {"n_queries": 20}),
    ("torchattacks.CW", {"steps": 3}),
    ("torchattacks.PGDL2", {"steps": 3}),
    ("torchattacks.GN", {}),
    ("foolbox.FGSM", {}),
    ("foolbox.LinfPGD", {"steps": 3}),
    ("foolbox.L2PGD", {"steps": 3}),
    ("foolbox.LinfDeepFoolAttack", {"steps": 3}),
    ("foolbox.LinfAdditiveUniformNoiseAttack", {}),
]
CASES = BUILTIN_CASES + WRAPPED_CASES
IDS = [f"{n}-{p.get('backend', '')}".rstrip("-") for n, p in CASES]


@pytest.fixture(scope="module")
def batch(digits_splits):
    return digits_splits.test.x[:32], digits_splits.test.y[:32]


#: what a white-box attacker of the DkNN knows, for attacks that declare ``adaptive-dknn``
KNOWLEDGE: list[DkNNKnowledge] = []


@pytest.fixture(scope="module", autouse=True)
def _dknn_knowledge(digits_model, digits_splits):
    s = digits_splits
    dknn = DkNN(digits_model, k=25).fit(s.train.x, s.train.y).calibrate(s.calibration.x, s.calibration.y)
    KNOWLEDGE[:] = [DkNNKnowledge.from_dknn(dknn, s.train.x, s.train.y)]
    yield
    KNOWLEDGE.clear()


def _make(name: str, params: dict) -> Attack:
    params = dict(params)
    attack = create_attack(name, backend=params.pop("backend", None), **params)
    if "adaptive-dknn" in attack.properties and KNOWLEDGE:
        attack.set_knowledge(KNOWLEDGE[0])  # type: ignore[attr-defined]
    return attack


def test_registry_holds_builtins_and_both_libraries():
    names = list_attacks()
    assert {"fgsm", "bim", "pgd"} <= set(BUILTINS)
    assert {"torchattacks.MIFGSM", "torchattacks.PGD", "foolbox.LinfDeepFoolAttack", "foolbox.LinfPGD"} <= set(names)
    assert len(list_attacks("torchattacks.*")) >= 35 and len(list_attacks("foolbox.*")) >= 50
    assert "torchattacks.MultiAttack" not in names  # wrappers of attacks, not attacks


# -- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_contract_eps_ball_box_and_success(name, params, digits_model, batch):
    x, y = batch
    res = _make(name, params)(digits_model, x, y, THREAT, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.linf.shape == (32,) and float(res.linf.max()) <= EPS + FLOAT_ATOL
    assert float(res.x_adv.min()) >= -FLOAT_ATOL and float(res.x_adv.max()) <= 1 + FLOAT_ATOL
    with torch.no_grad():
        assert torch.equal(res.success, digits_model(res.x_adv).argmax(1) != y)
    assert res.success.dtype == torch.bool and res.seconds > 0


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_contract_reproducible_under_a_seed(name, params, digits_model, batch):
    x, y = batch
    attack = _make(name, params)
    a = attack(digits_model, x, y, THREAT, generator=torch.Generator().manual_seed(7)).x_adv
    torch.rand(3)  # global RNG activity in between must not matter
    b = attack(digits_model, x, y, THREAT, generator=torch.Generator().manual_seed(7)).x_adv
    assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_contract_model_untouched(name, params, digits_model, batch):
    x, y = batch
    model = copy.deepcopy(digits_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_ = list(model.parameters())
    params_[0].requires_grad_(False)  # a frozen layer stays frozen, the others stay trainable
    for p in params_[1:]:
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in params_]
    _make(name, params)(model, x, y, THREAT, generator=torch.Generator().manual_seed(0))
    assert all(m.training for m in model.modules())  # train mode restored
    assert [p.requires_grad for p in params_] == [False] + [True] * (len(params_) - 1)
    assert params_[0].grad is None
    assert all(p.grad is g and bool((g == 0.5).all()) for p, g in zip(params_[1:], grads[1:], strict=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_contract_bad_parameters_rejected(name, params):
    with pytest.raises(AttackParamsError, match="not_a_param: unknown parameter") as info:
        _make(name, {**params, "not_a_param": 1})
    assert info.value.attack == name
    assert ATTACKS.get(name).check_params({"not_a_param": 1})  # what `advbench validate` uses


# -- built-in parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("pgd", {"steps": 0}, "steps: expected an integer >= 1, got 0"),
        ("pgd", {"steps": "ten"}, "steps: given 'ten' (str); expected an integer"),
        ("bim", {"step_size": -0.1}, "step_size: expected a number > 0"),
        ("pgd", {"random_start": "yes"}, "random_start: given 'yes' (str); expected true or false"),
        ("pgd", {"stepsize": 0.1}, "did you mean 'step_size'"),
        (
            "fgsm",
            {"backend": "cleverhans"},
            "backend: given 'cleverhans' (str); expected one of 'torchattacks', 'foolbox'",
        ),
    ],
)
def test_builtin_bad_parameters(name, params, message):
    backend = params.pop("backend", None)
    with pytest.raises(AttackParamsError, match=re.escape(message)):
        create_attack(name, backend=backend, **params)
    assert any(message in p for p in ATTACKS.get(name).check_params(params, backend=backend))


def test_direct_construction_validates_and_repr_is_from_parameters():
    from advbench.attacks.pgd import PGD

    with pytest.raises(AttackParamsError, match="steps"):
        PGD(steps=-1)
    assert repr(PGD(steps=5, backend="foolbox")) == "PGD(steps=5, step_size=None, random_start=True, backend='foolbox')"
    assert repr(create_attack("torchattacks.MIFGSM", steps=3)) == "torchattacks.MIFGSM(steps=3)"


def test_library_parameters_from_signatures():
    mifgsm = ATTACKS.get("torchattacks.MIFGSM")
    assert mifgsm.check_params({"steps": 5, "decay": 0.5}) == []
    assert mifgsm.check_params({"eps": 0.3}) == [
        "eps: given 0.3; expected no 'eps' here: advbench sets it from the threat model "
        "(list the radii in the attack's 'eps'); remove it"
    ]
    assert (
        "random_start: given 1 (int); expected true or false"
        in ATTACKS.get("torchattacks.PGD").check_params({"random_start": 1})[0]
    )
    assert "implemented by torchattacks only" in mifgsm.check_params({}, backend="foolbox")[0]
    assert mifgsm.check_params({}, backend="torchattacks") == []
    deepfool = ATTACKS.get("foolbox.LinfDeepFoolAttack")
    assert deepfool.check_params({"steps": 10, "overshoot": 0.1}) == []
    assert "steps: given 'many' (str); expected an integer" in deepfool.check_params({"steps": "many"})[0]


def test_backend_rejected_for_single_implementation_attacks():
    class Plain(Attack):
        def run(self, model, x, y, threat, generator):
            return x

    ATTACKS.add("test-plain", Plain, source="user")
    try:
        with pytest.raises(AttackParamsError, match="single implementation; remove it"):
            create_attack("test-plain", backend="foolbox")
        with pytest.raises(AttackParamsError, match="implemented by torchattacks only"):
            create_attack("torchattacks.MIFGSM", backend="foolbox")
    finally:
        ATTACKS.unregister("test-plain")


def test_unknown_attack_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="'pgd'"):
        create_attack("pdg")


# -- validation of every adversarial batch -----------------------------------------------------


def test_check_adversarial_names_attack_batch_and_worst_offender():
    x = torch.full((4, 1, 2, 2), 0.5)
    ok = x + EPS + FLOAT_ATOL / 2  # inside the stated float tolerance
    check_adversarial(x, ok, THREAT, attack="a", batch=0)
    bad = x.clone()
    bad[2, 0, 1, 1] += 0.3
    bad[1, 0, 0, 0] += 0.2
    with pytest.raises(ThreatModelError, match=r"attack pgd-x .* batch 3: example 2 is at L-inf distance 0\.3"):
        check_adversarial(x, bad, THREAT, attack="pgd-x", batch=3)
    out = x.clone()
    out[1, 0, 0, 0] = 0.55
    out[3, 0, 0, 0] = -0.04
    with pytest.raises(ThreatModelError, match=r"example 3 leaves the box \(0\.0, 1\.0\) \(value -0\.04\)"):
        check_adversarial(torch.where(out < 0, 0.0, x), out, THREAT, attack="a", batch=0)
    nan = x.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(ThreatModelError, match="example 1 has non-finite"):
        check_adversarial(x, nan, THREAT, attack="a", batch=0)
    with pytest.raises(ThreatModelError, match="expected shape"):
        check_adversarial(x, x[:2], THREAT, attack="a", batch=0)
    with pytest.raises(ThreatModelError, match=r"expected dtype torch\.float32, got torch\.float64"):
        check_adversarial(x, x.double(), THREAT, attack="a", batch=0)


class _BreaksExampleThree(Attack):
    """Deliberately broken: from its second batch on, moves example 3 by 2 * eps (inside the box)."""

    def __init__(self) -> None:
        self.calls = 0

    def params(self):
        return {}

    def run(self, model, x, y, threat, generator):
        self.calls += 1
        out = x.clone()
        if self.calls >= 2:
            out[3] = x[3] + 2 * threat.eps * torch.sign(0.5 - x[3])
        return out


def test_broken_attack_raises_never_clipped(digits_model, digits_splits):
    register_attack("test-broken")(_BreaksExampleThree)
    try:
        attack = create_attack("test-broken")
        x, y = digits_splits.test.x[:20], digits_splits.test.y[:20]
        with pytest.raises(ThreatModelError, match=r"_BreaksExampleThree\(\) .* batch 1: example 3 .* more than eps"):
            generate(digits_model, attack, x, y, THREAT, batch_size=10)
    finally:
        ATTACKS.unregister("test-broken")


def test_input_outside_bounds_is_rejected(digits_model, batch):
    x, y = batch
    with pytest.raises(ThreatModelError, match="outside the threat model's bounds"):
        create_attack("fgsm")(digits_model, x * 2, y, THREAT)


def test_threat_model_rejects_pixel_eps():
    with pytest.raises(ValueError, match="write 8/255, not 8"):
        ThreatModel(eps=8)


# -- dataset-level generation ------------------------------------------------------------------


def test_generate_is_seeded_batched_and_bounded(digits_model, digits_splits):
    x, y = digits_splits.test.x[:60], digits_splits.test.y[:60]
    attack = create_attack("pgd", steps=2)
    a = generate(digits_model, attack, x, y, THREAT, batch_size=25, seed=3, progress=True)
    b = generate(digits_model, attack, x, y, THREAT, batch_size=25, seed=3)
    c = generate(digits_model, attack, x, y, THREAT, batch_size=25, seed=4)
    assert a.x_adv.shape == x.shape and a.success.shape == (60,) and a.linf.shape == (60,)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    # batch 1 alone, with its own generator, gives the same examples as inside the whole run
    part = attack(digits_model, x[25:50], y[25:50], THREAT, generator=batch_generator(3, 1))
    assert torch.equal(part.x_adv, a.x_adv[25:50])


def test_seeding_leaves_the_global_rng_alone(digits_model, batch):
    x, y = batch
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    create_attack("pgd", steps=1)(digits_model, x, y, THREAT, generator=torch.Generator().manual_seed(0))
    create_attack("pgd", steps=1, backend="foolbox")(digits_model, x, y, THREAT, generator=torch.Generator())
    assert torch.equal(torch.rand(5), expected)


# -- laziness and listing ----------------------------------------------------------------------


@pytest.mark.integration
def test_libraries_not_imported_to_list_or_validate_builtins():
    code = (
        "import sys\n"
        "from advbench.attacks import ATTACKS, create_attack\n"
        "from advbench.suite.validate import load_suite\n"
        "names = ATTACKS.list()\n"
        "assert 'torchattacks.MIFGSM' in names and 'foolbox.LinfPGD' in names\n"
        "create_attack('pgd', steps=3, backend='foolbox')\n"
        "load_suite('suites/quick.yaml')\n"
        "print(sorted(m for m in ('torchattacks', 'foolbox') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stderr


def test_list_rows_for_attacks():
    from advbench.cli.list_cmd import rows

    table = {r["name"]: r for r in rows("attacks")}
    assert table["pgd"] == {
        "name": "pgd",
        "norm": "linf",
        "targeted": False,
        "source": "advbench",
        "parameters": "steps=40, step_size=None, random_start=True, backend='torchattacks'",
    }
    mifgsm = table["torchattacks.MIFGSM"]
    assert (mifgsm["norm"], mifgsm["targeted"], mifgsm["source"]) == ("linf", True, "torchattacks")
    assert "decay=1.0" in mifgsm["parameters"]
    assert not re.search(r"\b(eps|model)=", mifgsm["parameters"])
    assert table["foolbox.L2CarliniWagnerAttack"]["norm"] == "l2"
