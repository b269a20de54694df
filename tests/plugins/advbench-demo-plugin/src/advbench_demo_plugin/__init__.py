"""A demonstration advbench attack plugin: registered through the ``advbench.attacks`` entry points."""

from __future__ import annotations

import torch

from advbench.attacks.base import Attack, ThreatModel


class SignNoise(Attack):
    """Random-sign noise of size ``scale * eps``, inside the box: a weak but valid L-inf attack."""

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale
        self._validate()

    @classmethod
    def _check_values(cls, params: dict) -> list[str]:
        ok = 0 < params["scale"] <= 1
        return [] if ok else [f"scale: expected a number in (0, 1], got {params['scale']!r}"]

    def run(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        noise = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
        return (x + self.scale * threat.eps * noise).clamp(*threat.bounds)


class BrokenAttack(Attack):
    """Deliberately wrong: steps to twice eps. advbench must refuse its output (ThreatModelError)."""

    def __init__(self) -> None:
        pass

    def run(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        return (x + 2 * threat.eps).clamp(*threat.bounds)
