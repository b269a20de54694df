"""Adversarial attacks: a registry of attack classes, built-ins and wrapped libraries."""

from __future__ import annotations

from advbench.registry import Registry

__all__ = ["ATTACKS", "register_attack"]

#: name -> Attack class (or factory) taking keyword-only hyper-parameters
ATTACKS: Registry = Registry("attack", group="advbench.attacks")
register_attack = ATTACKS.register
