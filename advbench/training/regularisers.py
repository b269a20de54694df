"""Representation regularisers: a registry of loss terms on hidden layers, and the built-ins.

A regulariser reads named hidden layers of a batch and its labels and returns one or more loss
terms; the composite objective (docs/method.md, section 3) adds ``weight * term`` for each of them to
the cross-entropy. A regulariser is an :class:`torch.nn.Module`: its own parameters (learned
temperatures, class centres, ...) are optimised by its own optimiser (:meth:`Regulariser.make_optimizer`),
always to *minimise* its term whatever the sign of the weight (:meth:`Regulariser.own`), and its
state dict is checkpointed next to the model's weights.

Regularisers come from the ``@register_regulariser("name")`` decorator or the
``advbench.regularisers`` entry-point group (installed packages). A registered object is a factory
(usually the class) called as ``factory(ctx, **params)`` with a :class:`RegulariserContext`
(layers, weight, number of classes, layer widths) and the suite's ``params``.

Built-ins (docs/regularisers.md): ``snnl`` (Frosst et al. 2019, in :mod:`advbench.training.loss`),
``center`` (Wen et al. 2016), ``supcon`` (Khosla et al. 2020) and ``cdd`` (class data description,
the multi-class data description of Lee, Yu and Yu 2020).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from advbench.registry import Registry

__all__ = [
    "REGULARISERS",
    "CenterLoss",
    "ClassDataDescription",
    "Regulariser",
    "RegulariserContext",
    "SupervisedContrastive",
    "create_regulariser",
    "list_regularisers",
    "register_regulariser",
    "scale_grad",
]

#: name -> Regulariser class (or factory) called as ``factory(ctx, **params)``
REGULARISERS: Registry = Registry("regulariser", group="advbench.regularisers")
register_regulariser = REGULARISERS.register


def list_regularisers(pattern: str = "*") -> list[str]:
    """Sorted names of the registered regularisers matching a glob ``pattern``."""
    return REGULARISERS.list(pattern)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its incoming gradient multiplied by ``scale`` on the way back."""
    return _ScaleGrad.apply(x, scale)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RegulariserContext:
    """What advbench tells a regulariser about where it sits.

    ``layers``: the hidden layers it reads (in order); ``weight``: the factor of its terms in the
    composite loss (may be negative); ``num_classes``; ``dims``: each layer's flattened width.
    """

    layers: tuple[str, ...]
    weight: float
    num_classes: int
    dims: Mapping[str, int] = field(default_factory=dict)


class Regulariser(nn.Module):
    """Base class of a loss term on hidden representations.

    Subclasses implement :meth:`forward` (named *unweighted* terms) and may own parameters, buffers,
    an optimiser (:meth:`make_optimizer`, default Adam at ``param_lr`` over the parameters) and a
    post-step hook (:meth:`after_step`). ``default_layers`` says which layers it reads when the
    suite gives none: ``"all"`` hidden layers or the ``"last"`` one (the embedding).
    """

    default_layers: ClassVar[Literal["all", "last"]] = "last"

    def __init__(self, ctx: RegulariserContext) -> None:
        super().__init__()
        if not ctx.layers:
            raise ValueError("a regulariser needs at least one layer to read, got none")
        if ctx.weight == 0:
            raise ValueError("a regulariser's weight must be non-zero (a zero weight is the baseline: leave it out)")
        self.layers = tuple(ctx.layers)
        self.weight = float(ctx.weight)
        self.num_classes = int(ctx.num_classes)
        self.dims = dict(ctx.dims)
        self.param_lr = 1e-3
        #: per-batch diagnostics of the last forward (e.g. a temperature), logged by the trainer
        self.metrics: dict[str, float] = {}

    def forward(self, feats: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named scalar terms (unweighted) from the batch's representations ``feats[layer]`` and labels ``y``."""
        raise NotImplementedError

    def own(self, p: Tensor) -> Tensor:
        """``p`` with its gradient divided by the weight: the parameter then sees the derivative of the term itself."""
        return scale_grad(p, 1.0 / self.weight)

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser of this regulariser's own parameters (None when it has none)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.param_lr) if params else None

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to clamp a parameter)."""


def create_regulariser(name: str, ctx: RegulariserContext, params: Mapping[str, Any] | None = None) -> Regulariser:
    """Build the registered regulariser ``name`` for ``ctx`` with keyword ``params``."""
    factory = REGULARISERS.get(name)
    reg = factory(ctx, **dict(params or {}))
    if not isinstance(reg, Regulariser):
        raise TypeError(
            f"regulariser {name!r} built a {type(reg).__name__}; expected an advbench.training.Regulariser "
            f"subclass instance; derive the plugin's class from it"
        )
    return reg


def _flat(h: Tensor) -> Tensor:
    return h.reshape(h.shape[0], -1)


def param_key(layer: str) -> str:
    # ModuleDict / ParameterDict keys may not contain dots
    return layer.replace(".", "__")


@register_regulariser("center")
class CenterLoss(Regulariser):
    """Center loss (Wen, Zhang, Li and Qiao, ECCV 2016), one term per layer.

        L_C = 1/2 * sum_i || h_i - c_{y_i} ||^2        (``reduction="sum"``, the paper's eq. 2)

    with ``h_i`` the flattened representation; ``reduction="mean"`` divides by the batch size.
    Centres start at zero. ``update="paper"`` (default) moves them by the paper's rule (eq. 4) after
    each batch, on the detached features, with no gradient:
    ``c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - h_i) / (1 + n_j)``. ``update="sgd"`` makes them
    parameters learned by plain SGD (learning rate ``alpha``) on the derivative of L_C.
    """

    default_layers = "last"

    def __init__(
        self,
        ctx: RegulariserContext,
        *,
        alpha: float = 0.5,
        update: Literal["paper", "sgd"] = "paper",
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        super().__init__(ctx)
        if update not in ("paper", "sgd"):
            raise ValueError(f"update must be 'paper' or 'sgd', got {update!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha (the centres' step size) must be in (0, 1], got {alpha}")
        missing = [la for la in self.layers if la not in self.dims]
        if missing:
            raise ValueError(f"center loss needs the width of layers {missing}; the context gives {self.dims}")
        self.alpha, self.update, self.reduction = float(alpha), update, reduction
        self.param_lr = self.alpha
        zeros = {param_key(la): torch.zeros(self.num_classes, self.dims[la]) for la in self.layers}
        if update == "sgd":
            self.centres = nn.ParameterDict({k: nn.Parameter(v) for k, v in zeros.items()})
        else:
            self.centres = nn.ParameterDict({k: nn.Parameter(v, requires_grad=False) for k, v in zeros.items()})

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        return torch.optim.SGD(self.centres.parameters(), lr=self.alpha) if self.update == "sgd" else None

    def forward(self, feats: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            h = _flat(feats[layer])
            c = self.centres[param_key(layer)]
            cy = self.own(c)[y] if self.update == "sgd" else c[y]  # a copy: the update below cannot reach it
            term = 0.5 * (h - cy).pow(2).sum()
            out[layer] = term / len(y) if self.reduction == "mean" else term
            if self.update == "paper":
                with torch.no_grad():
                    self._paper_update(c, h.detach(), y)
        return out

    def _paper_update(self, c: Tensor, h: Tensor, y: Tensor) -> None:
        onehot = nn.functional.one_hot(y, self.num_classes).to(h.dtype)  # (b, C)
        n = onehot.sum(0)  # (C,)
        delta = (n[:, None] * c - onehot.T @ h) / (1.0 + n[:, None])
        c.sub_(self.alpha * delta)


@register_regulariser("supcon")
class SupervisedContrastive(Regulariser):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, eq. 2 "L_out"), as an auxiliary term.

    On the L2-normalised representations ``z`` of one layer, with anchors ``i`` the batch, ``A(i)``
    every other example and ``P(i)`` those of ``i``'s class::

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )

    There is one view per example (no augmentation) and no projection head: the term shapes the layer
    itself. Anchors with no positive in the batch are left out. ``reduction="mean"`` (default, as the
    authors' code) averages ``L_i`` over the anchors kept; ``"sum"`` sums them (eq. 2 as printed).
    """

    default_layers = "last"

    def __init__(
        self, ctx: RegulariserContext, *, temperature: float = 0.1, reduction: Literal["mean", "sum"] = "mean"
    ) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.temperature, self.reduction = float(temperature), reduction

    def forward(self, feats: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        return {layer: supcon_loss(_flat(feats[layer]), y, self.temperature, self.reduction) for layer in self.layers}


def supcon_loss(x: Tensor, y: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """Supervised contrastive loss of rows ``x`` (normalised here), labels ``y``; see :class:`SupervisedContrastive`."""
    z = nn.functional.normalize(x, dim=1)
    b = len(y)
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    logits = (z @ z.T / temperature).masked_fill(eye, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    if not bool(keep.any()):
        return (z * 0).sum()  # no anchor has a positive: a zero term that keeps the graph
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[keep] / n_pos[keep]
    return per_anchor.mean() if reduction == "mean" else per_anchor.sum()


@register_regulariser("cdd")
class ClassDataDescription(Regulariser):
    """Class data description: the multi-class data description (MCDD) loss of Lee, Yu and Yu (KDD 2020).

    Each class ``k`` has a centre ``mu_k``, a spread ``sigma_k`` and a bias ``b_k`` in the layer's
    (flattened, width ``d``) embedding; the class-conditional density is the isotropic Gaussian
    ``N(mu_k, sigma_k^2 I)``, whose negative log-density (up to a constant) is::

        D_k(h) = ||h - mu_k||^2 / (2 sigma_k^2) + d * log sigma_k

    The term, averaged over the batch, is::

        L = -log( exp(-D_{y}(h) + b_{y}) / sum_k exp(-D_k(h) + b_k) )   +   lam * D_{y}(h)

    The second part pulls each example to its class centre (Deep SVDD's objective, one sphere per
    class); the first is the classification by distance that pushes the centres apart. The centres
    start at the class means of the first batch that contains the class (Deep SVDD's initialisation
    by a first forward pass), ``log sigma`` and ``b`` at zero; all three are learned by Adam at
    ``lr`` on the derivative of this term.
    """

    default_layers = "last"

    def __init__(self, ctx: RegulariserContext, *, lam: float = 1.0, lr: float = 0.01) -> None:
        super().__init__(ctx)
        if lam < 0:
            raise ValueError(f"lam (the weight of the pull-to-centre part) must be >= 0, got {lam}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        missing = [la for la in self.layers if la not in self.dims]
        if missing:
            raise ValueError(
                f"class data description needs the width of layers {missing}; the context gives {self.dims}"
            )
        self.lam = float(lam)
        self.param_lr = float(lr)
        k = self.num_classes
        self.centres = nn.ParameterDict(
            {param_key(la): nn.Parameter(torch.zeros(k, self.dims[la])) for la in self.layers}
        )
        self.log_sigma = nn.ParameterDict({param_key(la): nn.Parameter(torch.zeros(k)) for la in self.layers})
        self.bias = nn.ParameterDict({param_key(la): nn.Parameter(torch.zeros(k)) for la in self.layers})
        for la in self.layers:
            self.register_buffer(f"seen_{param_key(la)}", torch.zeros(k, dtype=torch.bool))

    def forward(self, feats: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            key = param_key(layer)
            h = _flat(feats[layer])
            self._init_centres(key, h.detach(), y)
            mu, log_s, b = (self.own(p[key]) for p in (self.centres, self.log_sigma, self.bias))
            cls, dd = mcdd_terms(h, y, mu, log_s, b)
            out[layer] = cls + self.lam * dd
            self.metrics[f"cls/{layer}"] = float(cls.detach())
            self.metrics[f"dd/{layer}"] = float(dd.detach())
        return out

    @torch.no_grad()
    def _init_centres(self, key: str, h: Tensor, y: Tensor) -> None:
        seen: Tensor = getattr(self, f"seen_{key}")
        present = torch.zeros_like(seen)
        present[y] = True
        new = present & ~seen
        if not bool(new.any()):
            return
        onehot = nn.functional.one_hot(y, self.num_classes).to(h.dtype)
        means = (onehot.T @ h) / onehot.sum(0).clamp_min(1)[:, None]
        self.centres[key][new] = means[new].to(self.centres[key].dtype)
        seen |= new


def mcdd_terms(h: Tensor, y: Tensor, mu: Tensor, log_sigma: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(classification-by-distance, data-description) parts of :class:`ClassDataDescription`, batch means."""
    d = h.shape[1]
    sq = (h.pow(2).sum(1, keepdim=True) + mu.pow(2).sum(1)[None, :] - 2.0 * h @ mu.T).clamp_min(0.0)  # (b, C)
    dist = sq / (2.0 * torch.exp(2.0 * log_sigma)[None, :]) + d * log_sigma[None, :]
    logits = -dist + bias[None, :]
    cls = nn.functional.cross_entropy(logits, y)
    dd = dist.gather(1, y[:, None]).mean()
    return cls, dd


def resolve_layers(reg: Any, hidden: Sequence[str], layers: Sequence[str] | None) -> tuple[str, ...]:
    """The layers a regulariser factory reads: ``layers`` if given, else its ``default_layers`` of ``hidden``."""
    if layers is not None:
        return tuple(layers)
    default = getattr(reg, "default_layers", "last")
    return tuple(hidden) if default == "all" else (hidden[-1],)
