"""The Soft Nearest Neighbor Loss (Frosst et al. 2019) and the entanglement of a representation.

Definitions: docs/method.md, sections 1 and 2.

For a batch of b flattened representations with labels y and a temperature T::

    SNNL = -(1/b) sum_i log( eps + sum_{j != i, y_j = y_i} exp(-d_ij / T) / sum_{k != i} exp(-d_ik / T) )

with d the squared Euclidean distance (default) or the cosine distance ``1 - cos``.

**Rows with no same-class partner.** Their numerator is empty (log 0). We follow the reference code
(cleverhans ``SNNLCrossEntropy``): a stability ``eps`` (1e-5) is added inside the log, so such a row
contributes exactly ``-log(eps)`` (11.5129 for the default) and no gradient. The ratio itself is
computed with a row-wise max shift (log-sum-exp), so it never underflows: the reference also adds
``eps`` to the row normaliser, which only matters when every weight of the row underflows in its
non-log computation (then the row sits at the floor with a zero gradient). That underflow is an
artefact of a temperature badly scaled to the layer; :func:`floor_rate` measures how often the
reference computation would hit it, so it can be monitored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "SNNL_EPS",
    "SoftNearestNeighborLoss",
    "class_masks",
    "entanglement",
    "floor_from_shift",
    "floor_rate",
    "pairwise_distances",
    "snnl",
    "snnl_from_distances",
    "snnl_rows",
]

Distance = Literal["euclidean", "cosine"]

#: The reference code's stability epsilon; a row with no same-class partner contributes -log(SNNL_EPS).
SNNL_EPS = 1e-5
#: exp(-x) underflows float32 (below its smallest normal number) for x above this.
_UNDERFLOW = -math.log(torch.finfo(torch.float32).tiny)


class _SquaredDistances(torch.autograd.Function):
    """Squared Euclidean distances ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (clamped at 0) with a one-matmul backward.

    Autograd through ``addmm`` would spend two (b, b) x (b, d) products and several (b, d) passes on
    the backward; the gradient is ``2 (diag(rowsum(S)) - S) x`` with ``S = g + g^T``: one product.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        gram = x @ x.T
        sq = gram.diagonal()
        d = (sq[:, None] + sq[None, :]).sub_(gram, alpha=2.0)
        positive = d > 0
        ctx.save_for_backward(x, positive)
        return d.clamp_min_(0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, positive = ctx.saved_tensors
        g = grad * positive
        s = g + g.T
        # 2 (diag(rowsum(S)) - S) x as a single product: no pass over the (b, d) activations
        m = s.mul_(-2.0)
        m.diagonal().sub_(m.sum(1))
        return m @ x


def pairwise_distances(x: Tensor, *, distance: Distance = "euclidean") -> Tensor:
    """The (b, b) matrix of squared Euclidean (or cosine, ``1 - cos``) distances between rows of ``x``.

    ``x`` is flattened to (b, -1). One matrix product; the diagonal is whatever rounding gives (the
    SNNL masks it). Both distances ignore the order of the features, so a channels-last (b, c, h, w)
    activation is flattened in its memory order (a view, no copy), and its gradient comes back
    channels-last for the convolution's backward.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    x = x.reshape(x.shape[0], -1)
    if distance == "euclidean":
        return _SquaredDistances.apply(x)
    if distance == "cosine":
        xn = nn.functional.normalize(x, dim=1, eps=1e-12)
        return 1.0 - xn @ xn.T
    raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")


def snnl_from_distances(d: Tensor, y: Tensor, temperature: Tensor | float, *, eps: float = SNNL_EPS) -> Tensor:
    """The SNNL (a scalar) from a (b, b) distance matrix ``d``; see the module docstring."""
    b = d.shape[0]
    if d.dim() != 2 or d.shape[1] != b:
        raise ValueError(f"expected a square (b, b) distance matrix, got shape {tuple(d.shape)}")
    if b < 2:
        raise ValueError(f"the SNNL needs a batch of at least 2 points, got {b}")
    if y.shape != (b,):
        raise ValueError(f"expected {b} labels of shape ({b},), got shape {tuple(y.shape)}")
    return snnl_rows(d, temperature, *class_masks(y), eps=eps)[0]


def class_masks(y: Tensor) -> tuple[Tensor, Tensor]:
    """(diagonal, same-class off-diagonal) boolean masks for labels ``y``."""
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    return eye, (y[:, None] == y[None, :]) & ~eye


def snnl_rows(
    d: Tensor, temperature: Tensor | float, eye: Tensor, same: Tensor, *, eps: float
) -> tuple[Tensor, Tensor]:
    """The SNNL and, per row, ``-min_{k != i} d_ik / T`` (the log of the row's largest weight)."""
    logits = (-d / temperature).masked_fill(eye, -math.inf)
    # Shift each row by its max (a constant shift needs no gradient): the largest weight becomes 1,
    # so the normaliser is >= 1 and the ratio never underflows to 0/0.
    shift = logits.detach().amax(1, keepdim=True)
    w = torch.exp(logits - shift)
    ratio = (w * same).sum(1) / w.sum(1)
    return -torch.log(eps + ratio).mean(), shift.squeeze(1)


def snnl(
    x: Tensor,
    y: Tensor,
    temperature: Tensor | float,
    *,
    distance: Distance = "euclidean",
    eps: float = SNNL_EPS,
) -> Tensor:
    """Soft Nearest Neighbor Loss of representations ``x`` (flattened to (b, -1)) with labels ``y``.

    High = classes entangled, low = separated. Differentiable in ``x`` and ``temperature``. A row
    with no same-class partner contributes ``-log(eps)`` (the reference convention).
    """
    return snnl_from_distances(pairwise_distances(x, distance=distance), y, temperature, eps=eps)


def floor_rate(d: Tensor, temperature: Tensor | float) -> float:
    """Fraction of rows whose off-diagonal weights ``exp(-d/T)`` all underflow float32.

    In the reference (non-log) computation such rows sit at the floor ``-log(eps)`` with a zero
    gradient: a sign that the temperature is too small for the layer's distances.
    """
    b = d.shape[0]
    with torch.no_grad():
        off = d.detach().masked_fill(torch.eye(b, dtype=torch.bool, device=d.device), math.inf)
        return floor_from_shift(-off.amin(1) / float(temperature))


def floor_from_shift(shift: Tensor) -> float:
    """The fraction of rows whose largest weight underflows (:func:`floor_rate`), from :func:`snnl_rows` shifts."""
    return float((shift < -_UNDERFLOW).float().mean())


class SoftNearestNeighborLoss(nn.Module):
    """The SNNL as a module with its temperature (fixed, or learned as ``log T`` when ``learn_temperature``).

    A learned temperature is an ordinary parameter: give it to an optimiser that *minimises* this
    loss (docs/method.md, section 2). For the composite objective with its sign-safe temperature update, see
    :class:`advbench.training.CompositeLoss`.
    """

    def __init__(
        self,
        *,
        temperature: float = 100.0,
        learn_temperature: bool = False,
        distance: Distance = "euclidean",
        eps: float = SNNL_EPS,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.learn_temperature = learn_temperature
        self.distance: Distance = distance
        self.eps = eps

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return snnl(x, y, self.temperature, distance=self.distance, eps=self.eps)

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature.detach()):.4g}, learn_temperature={self.learn_temperature}, "
            f"distance={self.distance!r}, eps={self.eps}"
        )


@torch.no_grad()
def entanglement(
    x: Tensor,
    y: Tensor,
    *,
    distance: Distance = "euclidean",
    grid: int | Sequence[float] = 25,
    eps: float = SNNL_EPS,
) -> tuple[float, float]:
    """The entanglement of a representation: ``(min_T SNNL(x, y, T), argmin T)`` (docs/method.md, section 2).

    ``grid`` as an int searches that many log-spaced temperatures spanning 1e-3..1e3 times the
    median off-diagonal distance (so any layer width works), then refines the best one by a
    golden-section search in log T. A sequence gives the temperatures to try, as is.
    One distance matrix (in the input's precision), the search in float64.
    """
    x = x.detach()
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"the SNNL needs a batch of at least 2 points, got {b}")
    if y.shape != (b,):
        raise ValueError(f"expected {b} labels of shape ({b},), got shape {tuple(y.shape)}")
    d = pairwise_distances(x if x.dtype == torch.float64 else x.float(), distance=distance).to(torch.float64)
    eye = torch.eye(b, dtype=torch.bool, device=d.device)
    # Each row shifted by its nearest neighbour's distance (the log-sum-exp shift, the same for every T),
    # and class sums by one product with the one-hot labels: a handful of (b, b) passes per temperature.
    e = d.masked_fill(eye, math.inf)
    e = e - e.amin(1, keepdim=True)
    classes, yi = torch.unique(y, return_inverse=True)
    onehot = nn.functional.one_hot(yi, len(classes)).to(torch.float64)

    def f(t: float) -> float:
        per_class = torch.exp(e / -t) @ onehot
        ratio = per_class.gather(1, yi[:, None]).squeeze(1) / per_class.sum(1)
        return float(-torch.log(eps + ratio).mean())

    if not isinstance(grid, int):
        temps = [float(t) for t in grid]
        if not temps or min(temps) <= 0:
            raise ValueError(f"grid temperatures must be a non-empty list of values > 0, got {list(grid)}")
        values = [f(t) for t in temps]
        i = min(range(len(temps)), key=values.__getitem__)
        return values[i], temps[i]
    if grid < 3:
        raise ValueError(f"grid must have at least 3 points, got {grid}")
    off = d[~eye]
    scale = float(off.median()) if b > 1 else 1.0
    if not scale > 0:
        scale = float(off.mean()) if float(off.mean()) > 0 else 1.0
    logs = torch.linspace(math.log(scale) - 3 * math.log(10), math.log(scale) + 3 * math.log(10), grid).tolist()
    values = [f(math.exp(s)) for s in logs]
    i = min(range(grid), key=values.__getitem__)
    lo, hi = logs[max(i - 1, 0)], logs[min(i + 1, grid - 1)]
    best_v, best_s = values[i], logs[i]
    # golden-section search in log T around the best grid point
    g = (math.sqrt(5) - 1) / 2
    a, c = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fc = f(math.exp(a)), f(math.exp(c))
    for _ in range(16):
        if fa < fc:
            hi, c, fc = c, a, fa
            a = hi - g * (hi - lo)
            fa = f(math.exp(a))
        else:
            lo, a, fa = a, c, fc
            c = lo + g * (hi - lo)
            fc = f(math.exp(c))
    for v, s in ((fa, a), (fc, c)):
        if v < best_v:
            best_v, best_s = v, s
    return best_v, math.exp(best_s)
