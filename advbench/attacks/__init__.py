"""Adversarial attacks: a registry of attack classes, built-ins and wrapped libraries.

* :mod:`advbench.attacks.base` — the contract (:class:`Attack`, :class:`ThreatModel`,
  :class:`AttackResult`, :func:`check_adversarial`, :func:`create_attack`);
* :mod:`advbench.attacks.fgsm`, :mod:`~advbench.attacks.bim`, :mod:`~advbench.attacks.pgd` — the
  built-ins, one file each;
* :mod:`advbench.attacks.libraries` — every torchattacks and foolbox attack under a namespaced name;
* :func:`generate` (in :mod:`advbench.attacks.base`) — dataset-level, batched, seeded generation.

Attacks are registered with ``@register_attack("name")`` (user code) or through the
``advbench.attacks`` entry-point group (installed packages, loaded lazily on first lookup).
"""

from __future__ import annotations

from advbench.registry import Registry

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackParamsError",
    "AttackResult",
    "ThreatModel",
    "check_adversarial",
    "create_attack",
    "generate",
    "list_attacks",
    "register_attack",
]

#: name -> Attack class (or factory) taking keyword-only hyper-parameters
ATTACKS: Registry = Registry("attack", group="advbench.attacks")
register_attack = ATTACKS.register


def list_attacks(pattern: str = "*") -> list[str]:
    """Sorted names of the registered attacks matching a glob ``pattern``."""
    return ATTACKS.list(pattern)


from advbench.attacks.base import (  # noqa: E402  (the registry must exist before attack modules import it)
    Attack,
    AttackParamsError,
    AttackResult,
    ThreatModel,
    check_adversarial,
    create_attack,
    generate,
)
