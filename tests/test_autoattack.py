"""AutoAttack (Croce & Hein 2020) through advbench's torchattacks wrapper agrees with torchattacks itself."""

from __future__ import annotations

import torch

import advbench.attacks.builtin  # noqa: F401  (registers the library wrappers)
from advbench.attacks import ATTACKS, ThreatModel, create_attack
from advbench.attacks.base import derive_seed, seeded_global_rng


def test_autoattack_metadata() -> None:
    cls = ATTACKS.get("torchattacks.AutoAttack")
    assert cls.properties == frozenset({"iterative", "gradient-based", "ensemble"})
    assert "eps" not in cls.library_params() and "seed" not in cls.library_params()


def test_autoattack_matches_torchattacks_directly(digits_model, digits_splits) -> None:
    """Same model, inputs and seeds: the standard AutoAttack gives identical adversarial examples."""
    import torchattacks

    x, y = digits_splits.test.x[:16], digits_splits.test.y[:16]
    threat = ThreatModel(eps=0.2)
    attack = create_attack("torchattacks.AutoAttack", version="standard")
    ours = attack(digits_model, x, y, threat, generator=torch.Generator().manual_seed(3))

    # what the wrapper does with the generator: one draw seeds AutoAttack, the next torch's global RNG
    g = torch.Generator().manual_seed(3)
    seed = derive_seed(g) % 2**31
    digits_model.eval()
    with seeded_global_rng(derive_seed(g), x.device):
        direct = torchattacks.AutoAttack(digits_model, norm="Linf", eps=0.2, n_classes=10, seed=seed)(x, y)
    assert torch.equal(ours.x_adv, direct)
    with torch.no_grad():
        assert torch.equal(ours.success, digits_model(direct).argmax(1) != y)
    # a working ensemble at eps=0.2 fools most of a plain digits CNN
    assert ours.success_rate > 0.5
