"""The composite objective (docs/method.md, section 3) with one temperature per regularised layer.

    L = CE(f(x), y) + alpha * sum_l SNNL(h_l(x), y, T_l)

Temperature modes (``SNNLConfig.temperature``):

* ``"learned"``: ``log T_l`` is a parameter updated by its own optimiser to *minimise* the layer's
  SNNL (docs/method.md, section 2), whatever the sign of alpha. The weights' gradient of ``alpha * SNNL`` would reach
  ``log T`` scaled by alpha (and with the wrong sign for alpha < 0); a gradient-scaling identity
  divides it by alpha on the way back, so ``log T`` receives exactly ``dSNNL/dlog T`` from the one
  backward pass.
* ``"reference"``: the reference code's ``T = T0 / t``; ``t`` starts at 1 and before each use takes
  one plain step ``t <- t - lr * dSNNL/dt`` on detached activations; no gradient reaches the network.
* ``"fixed"``: ``T = T0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import Tensor, nn

from advbench.config import SNNLConfig
from advbench.models import Classifier
from advbench.training.regularisers import (
    Regulariser,
    RegulariserContext,
    param_key,
    register_regulariser,
    scale_grad,
)
from advbench.training.snnl import (
    SNNL_EPS,
    class_masks,
    floor_from_shift,
    pairwise_distances,
    snnl_from_distances,
    snnl_rows,
)

__all__ = ["CompositeLoss", "LayerTemperature", "LossTerms", "SNNLRegulariser"]

# Bounds on a learned/reference temperature: keeps d/T finite in float32 if it drifts for many steps.
_LOG_T_MIN, _LOG_T_MAX = math.log(1e-4), math.log(1e8)


class LayerTemperature(nn.Module):
    """The temperature of one layer's SNNL in one of the modes ``learned``, ``reference``, ``fixed``."""

    t: Tensor  # reference mode: the divisor of T0 (a buffer)

    def __init__(self, *, mode: str, T0: float, lr: float) -> None:
        super().__init__()
        if mode not in ("learned", "reference", "fixed"):
            raise ValueError(f"temperature mode must be 'learned', 'reference' or 'fixed', got {mode!r}")
        if T0 <= 0:
            raise ValueError(f"T0 must be > 0, got {T0}")
        self.mode, self.T0, self.lr = mode, float(T0), float(lr)
        if mode == "learned":
            self.log_t = nn.Parameter(torch.tensor(math.log(T0)))
        else:  # reference: the divisor t of T0 / t; fixed: unused
            self.register_buffer("t", torch.tensor(1.0))

    @property
    def value(self) -> float:
        """The current temperature."""
        if self.mode == "learned":
            return math.exp(self.log_t.item())
        return self.T0 / float(self.t)

    def for_loss(self, d: Tensor, y: Tensor, *, alpha: float, eps: float) -> Tensor | float:
        """The temperature the composite loss uses on distances ``d`` (steps ``t`` in reference mode)."""
        if self.mode == "fixed":
            return self.T0
        if self.mode == "learned":
            return scale_grad(self.log_t, 1.0 / alpha).exp()
        t = self.t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            s = snnl_from_distances(d.detach(), y, self.T0 / t, eps=eps)
            (g,) = torch.autograd.grad(s, t)
        if torch.isfinite(g):
            new = (self.t - self.lr * g).clamp(self.T0 * math.exp(-_LOG_T_MAX), self.T0 * math.exp(-_LOG_T_MIN))
            self.t.copy_(new)
        return self.T0 / float(self.t)

    def clamp_(self) -> None:
        """Keep a learned ``log T`` within bounds (call after its optimiser steps)."""
        if self.mode == "learned":
            with torch.no_grad():
                self.log_t.clamp_(_LOG_T_MIN, _LOG_T_MAX)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, T={self.value:.4g}"


@dataclass
class LossTerms:
    """The terms of one evaluation of the composite loss (tensors keep their graph).

    ``snnl``/``temperature``/``floor`` come from the recipe's ``snnl`` block, per layer;
    ``regularisers`` holds the other regularisers' unweighted terms as ``"{name}/{term}"``.
    """

    loss: Tensor
    ce: Tensor
    logits: Tensor
    snnl: dict[str, Tensor] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)
    regularisers: dict[str, Tensor] = field(default_factory=dict)


@register_regulariser("snnl")
class SNNLRegulariser(Regulariser):
    """The Soft Nearest Neighbor Loss (Frosst et al. 2019) as a regulariser: one term per layer.

    The weight is alpha (``< 0`` entangles, ``> 0`` disentangles). Each layer keeps its own
    :class:`LayerTemperature` (``temperature``: ``learned``, ``reference`` or ``fixed``; docs/method.md,
    section 2); a learned one is optimised by Adam at ``temperature_lr`` on the SNNL itself.
    """

    default_layers = "all"

    def __init__(
        self,
        ctx: RegulariserContext,
        *,
        temperature: Literal["learned", "reference", "fixed"] = "learned",
        T0: float = 100.0,
        temperature_lr: float = 0.1,
        distance: Literal["euclidean", "cosine"] = "euclidean",
    ) -> None:
        super().__init__(ctx)
        self.distance = distance
        self.eps = SNNL_EPS
        self.param_lr = float(temperature_lr)
        self.temperatures = nn.ModuleDict(
            {param_key(layer): LayerTemperature(mode=temperature, T0=T0, lr=temperature_lr) for layer in self.layers}
        )
        self.floor: dict[str, float] = {}
        self.used_temperature: dict[str, float] = {}

    def temperature(self, layer: str) -> LayerTemperature:
        return self.temperatures[param_key(layer)]  # type: ignore[return-value]

    def forward(self, feats: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        eye, same = class_masks(y)
        for layer in self.layers:
            d = pairwise_distances(feats[layer], distance=self.distance)
            t = self.temperature(layer).for_loss(d, y, alpha=self.weight, eps=self.eps)
            s, shift = snnl_rows(d, t, eye, same, eps=self.eps)
            out[layer] = s
            self.used_temperature[layer] = float(t.detach()) if isinstance(t, Tensor) else float(t)
            self.floor[layer] = floor_from_shift(shift)
        return out

    def after_step(self) -> None:
        for layer in self.layers:
            self.temperature(layer).clamp_()

    def extra_repr(self) -> str:
        return f"alpha={self.weight}, layers={list(self.layers)}, distance={self.distance!r}"


class CompositeLoss(nn.Module):
    """``CE + alpha * sum_l SNNL(h_l, y, T_l) + sum_r weight_r * sum_t term_{r,t}``, from one forward pass.

    The SNNL comes from ``config`` (the recipe's ``snnl`` block) on ``layers``; ``regularisers`` are
    further :class:`Regulariser` modules, keyed by the name their terms are logged under. With
    ``alpha == 0`` and no other regulariser the representations are not read at all (baseline
    speed). The regularisers' own parameters belong to their own optimisers, never the network's.
    """

    def __init__(
        self, config: SNNLConfig, layers: Sequence[str], regularisers: Mapping[str, Regulariser] | None = None
    ) -> None:
        super().__init__()
        self.alpha = float(config.alpha)
        self.layers = tuple(layers)
        self.distance = config.distance
        self.eps = SNNL_EPS
        self.snnl: SNNLRegulariser | None = None
        if self.alpha != 0.0:
            ctx = RegulariserContext(layers=self.layers, weight=self.alpha, num_classes=0)
            self.snnl = SNNLRegulariser(
                ctx,
                temperature=config.temperature,
                T0=config.T0,
                temperature_lr=config.temperature_lr,
                distance=config.distance,
            )
        self.others = nn.ModuleDict(dict(regularisers or {}))

    def regularisers(self) -> dict[str, Regulariser]:
        """Every active regulariser by name (the SNNL block as ``snnl``)."""
        out: dict[str, Regulariser] = {"snnl": self.snnl} if self.snnl is not None else {}
        out.update(self.other_regularisers())
        return out

    def other_regularisers(self) -> dict[str, Regulariser]:
        """The recipe's ``regularisers`` list by name (not the SNNL block)."""
        return {k: cast(Regulariser, v) for k, v in self.others.items()}

    def temperature(self, layer: str) -> LayerTemperature:
        if self.snnl is None:
            raise ValueError(f"no SNNL temperature for layer {layer!r}: alpha is 0, so the SNNL is not computed")
        return self.snnl.temperature(layer)

    def temperature_parameters(self) -> list[nn.Parameter]:
        return list(self.snnl.parameters()) if self.snnl is not None else []

    def forward(self, model: Classifier, x: Tensor, y: Tensor) -> LossTerms:
        if self.snnl is None and not len(self.others):
            logits = model(x)
            ce = nn.functional.cross_entropy(logits, y)
            return LossTerms(ce, ce, logits)
        read = [*self.layers] if self.snnl is not None else []
        for reg in self.other_regularisers().values():
            read += [la for la in reg.layers if la not in read]
        feats = model.features(x, [*read, "logits"])
        logits = feats["logits"]
        ce = nn.functional.cross_entropy(logits, y)
        terms = LossTerms(ce, ce, logits)
        total = ce
        if self.snnl is not None:
            for layer, s in self.snnl(feats, y).items():
                terms.snnl[layer] = s
                terms.temperature[layer] = self.snnl.used_temperature[layer]
                terms.floor[layer] = self.snnl.floor[layer]
                total = total + self.alpha * s
        for name, reg in self.other_regularisers().items():
            for term, value in reg(feats, y).items():
                terms.regularisers[f"{name}/{term}"] = value
                total = total + reg.weight * value
        terms.loss = total
        return terms

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layers={list(self.layers)}, distance={self.distance!r}"
