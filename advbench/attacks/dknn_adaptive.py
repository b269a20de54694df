"""An adaptive attack on the DkNN: L-inf PGD in feature space toward another class's representations.

The DkNN (:mod:`advbench.evaluation.dknn`) votes with the training neighbours of an input in every
layer, so an attack that only flips the logits can leave the hidden representations among the true
class's neighbours and be caught by a low credibility. This attack instead moves the representations
of ``x`` in *every indexed layer* toward guide representations of a target class (the feature
adversaries of Sabour et al. 2016, in the form used against the DkNN by Sitawarin & Wagner 2019)::

    t_i   = argmin_{c != y_i} sum_l ||h_l(x_i) - g_l(c)||^2 / s_l            (the closest other class)
    loss  = sum_i sum_l ||h_l(x'_i) - g_{l,i}||^2 / s_l
    x'_0  = clip(x + U(-eps, eps))  (random_start),  x'_{t+1} = Proj_{x, eps}( x'_t - step_size * sign(grad loss) )

``g_l(c)`` is the mean representation of class ``c`` in layer ``l`` over the guide set; with
``n_neighbors = m > 0`` the guide of example ``i`` is instead the mean of the ``m`` guide points of
class ``t_i`` closest to ``x_i`` (the training neighbours a DkNN would find). ``s_l`` is the mean
squared norm of the guide set's representations in layer ``l``, so a 6,272-wide conv layer does not
drown the logits. ``layers=None`` attacks every hidden layer and the logits (the DkNN's default).

Where the guide comes from (``guide``):

* ``"batch"`` (default): the clean batch being attacked, labelled by ``y``. Needs nothing beyond the
  suite's parameters, so the attack can be built and run like any other; its knowledge of the
  training distribution is limited to the batch. An example whose batch holds no other class (a
  batch of one class) falls back to untargeted PGD on the cross-entropy.
* ``"reference"``: a reference set given once with :meth:`DkNNAdaptive.set_reference` (the runner
  passes the DkNN's training set, the white-box attacker's knowledge), subsampled to
  ``reference_size`` points per class with a fixed seed.

Like every attack it only sees pixels in [0, 1] and the model's ``features(x, layers)``; it never
queries the faiss index (the kNN vote is not differentiable).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, ThreatModel, check_steps

__all__ = ["DkNNAdaptive"]

_CHUNK = 500


@register_attack("dknn-adaptive", norm="linf", targeted=False, package="advbench")
class DkNNAdaptive(Attack):
    """Feature-space L-inf PGD toward the closest other class's representations (see the module doc).

    Args:
        steps: PGD iterations.
        step_size: pixel units per step; ``None`` means ``2.5 * eps / steps``.
        random_start: start from a uniform point in the eps-ball (drawn from the call's generator).
        layers: layers whose representations are pushed; ``None`` = every hidden layer and the logits.
        guide: ``"batch"`` (class means of the attacked batch) or ``"reference"`` (of the set given to
            :meth:`set_reference`).
        n_neighbors: 0 = guide toward the target class mean; m > 0 = toward the mean of the m guide
            points of the target class nearest to the input.
        reference_size: points per class kept by :meth:`set_reference`.
    """

    def __init__(
        self,
        *,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        layers: list[str] | None = None,
        guide: Literal["batch", "reference"] = "batch",
        n_neighbors: int = 0,
        reference_size: int = 100,
    ) -> None:
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.layers = None if layers is None else list(layers)
        self.guide = guide
        self.n_neighbors = n_neighbors
        self.reference_size = reference_size
        self._reference: tuple[Tensor, Tensor] | None = None
        self._validate()

    @classmethod
    def _check_values(cls, params: dict[str, Any]) -> list[str]:
        out = check_steps(params, default_step="2.5*eps/steps")
        if params["n_neighbors"] < 0:
            out.append(f"n_neighbors: expected an integer >= 0 (0 = class mean), got {params['n_neighbors']!r}")
        if params["reference_size"] < 1:
            out.append(f"reference_size: expected an integer >= 1, got {params['reference_size']!r}")
        layers = params["layers"]
        if layers is not None and (
            not isinstance(layers, list | tuple) or not layers or not all(isinstance(n, str) for n in layers)
        ):
            out.append(f"layers: expected a non-empty list of layer names or null for all, got {layers!r}")
        return out

    def set_reference(self, x: Tensor, y: Tensor) -> DkNNAdaptive:
        """Keep up to ``reference_size`` points per class of ``(x, y)`` (seeded) as the guide set."""
        y_np = torch.as_tensor(y).detach().cpu().numpy()
        if y_np.ndim != 1 or len(y_np) != len(x) or len(y_np) == 0:
            raise ValueError(
                f"expected a non-empty x (N, ...) and y (N,) of equal length, "
                f"got {tuple(x.shape)} and {tuple(y_np.shape)}"
            )
        rng = np.random.default_rng(0)
        keep = []
        for c in np.unique(y_np):
            idx = np.flatnonzero(y_np == c)
            keep.append(np.sort(rng.choice(idx, size=min(len(idx), self.reference_size), replace=False)))
        sel = torch.from_numpy(np.sort(np.concatenate(keep)))
        self._reference = (x.detach()[sel].cpu(), torch.as_tensor(y).detach()[sel].cpu().long())
        return self

    # -- the attack -------------------------------------------------------------------------------
    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        if not callable(getattr(model, "features", None)):
            raise TypeError(
                f"dknn-adaptive needs an advbench Classifier (with features(x, layers)), got {type(model).__name__}"
            )
        clf: Any = model  # an advbench Classifier (checked above)
        layers = self.layers or list(clf.layer_names)
        if self.guide == "reference":
            if self._reference is None:
                raise RuntimeError("guide='reference' needs a guide set: call attack.set_reference(x_train, y_train)")
            ref_x, ref_y = self._reference[0].to(x.device), self._reference[1].to(x.device)
        else:
            ref_x, ref_y = x, y
        if x.shape[0] == 0 or threat.eps == 0:
            return x.clone()

        with torch.no_grad():
            ref = _flat_features(clf, ref_x, layers)
            scale = {n: f.pow(2).sum(1).mean().clamp_min(1e-12) for n, f in ref.items()}
            clean = _flat_features(clf, x, layers)
            guides, has_guide = self._guides(clean, y, ref, ref_y, scale, int(clf.num_classes))

        step = 2.5 * threat.eps / self.steps if self.step_size is None else self.step_size
        x_adv = x.clone()
        if self.random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x_adv = threat.project(x + (2 * noise - 1) * threat.eps, x)
        for _ in range(self.steps):
            with torch.enable_grad():
                x_adv.requires_grad_(True)
                feats = clf.features(x_adv, layers)
                per_example = _total([(feats[n].flatten(1) - guides[n]).pow(2).sum(1) / scale[n] for n in layers])
                ce = F.cross_entropy(model(x_adv), y, reduction="none") if not bool(has_guide.all()) else 0.0
                loss = torch.where(has_guide, per_example, -ce).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(x_adv.detach() - step * grad.sign(), x)
        return x_adv.detach()

    def _guides(
        self,
        clean: dict[str, Tensor],
        y: Tensor,
        ref: dict[str, Tensor],
        ref_y: Tensor,
        scale: dict[str, Tensor],
        num_classes: int,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per example: the guide representation in each layer and whether a target class exists."""
        b = y.shape[0]
        present = torch.zeros(num_classes, dtype=torch.bool, device=y.device)
        present[ref_y.unique()] = True
        onehot = F.one_hot(ref_y, num_classes).to(next(iter(ref.values())).dtype)  # (R, C)
        counts = onehot.sum(0).clamp_min(1)
        means = {n: (onehot.T @ f) / counts[:, None] for n, f in ref.items()}  # (C, D)
        dist = _total([torch.cdist(clean[n], means[n]).pow(2) / scale[n] for n in clean])  # (B, C)
        allowed = present[None, :].expand(b, -1).clone()
        allowed[torch.arange(b), y] = False
        dist = dist.masked_fill(~allowed, float("inf"))
        target = dist.argmin(1)
        has_guide = allowed.any(1)
        if self.n_neighbors == 0:
            return {n: means[n][target] for n in clean}, has_guide
        # the mean of the n_neighbors guide points of the target class nearest to each input
        d_ref = _total([torch.cdist(clean[n], ref[n]).pow(2) / scale[n] for n in clean])  # (B, R)
        d_ref = d_ref.masked_fill(ref_y[None, :] != target[:, None], float("inf"))
        m = min(self.n_neighbors, d_ref.shape[1])
        near_d, near = d_ref.topk(m, dim=1, largest=False)
        weight = torch.isfinite(near_d).to(d_ref.dtype)
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1)
        return {n: torch.einsum("bm,bmd->bd", weight, ref[n][near]) for n in clean}, has_guide


def _total(terms: list[Tensor]) -> Tensor:
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _flat_features(model: Any, x: Tensor, layers: list[str]) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {n: [] for n in layers}
    for start in range(0, x.shape[0], _CHUNK):
        feats = model.features(x[start : start + _CHUNK], layers)
        for n in layers:
            parts[n].append(feats[n].flatten(1))
    return {n: torch.cat(p) for n, p in parts.items()}
