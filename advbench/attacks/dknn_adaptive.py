"""An adaptive white-box attack on the DkNN, after Sitawarin & Wagner (2019; 2020).

The DkNN (:mod:`advbench.evaluation.dknn`) votes with the ``k`` training neighbours of an input in
each indexed layer. Its vote is not differentiable, so the attack optimises a surrogate of it and
checks every candidate against the *real* DkNN (Sitawarin & Wagner, "On the Robustness of Deep
K-Nearest Neighbors", 2019; "Minimum-Norm Adversarial Examples on KNN and KNN-Based Models", 2020).

For each example ``x`` (label ``y``), each of ``n_targets`` target classes ``t`` (the wrong classes
the real DkNN finds most credible on the clean input, ties broken by the classifier's softmax) and
each of ``restarts`` starts, L-inf PGD minimises::

    loss(x') = sum_l [ mean_{g in G_l(y)} s(x', g) - mean_{g in G_l(t)} s(x', g) ]
               + logit_weight * max(z_y(x') - z_t(x'), -kappa)
    s(x', g) = sigmoid( (r_l - ||h_l(x') - h_l(g)||) / (temperature * r_l) )

``h_l`` is the representation in layer ``l``; ``G_l(c)`` are the ``n_guides`` (default ``k``)
training points of class ``c`` nearest to the clean ``x`` in layer ``l``; ``r_l`` is the distance of
``x``'s k-th training neighbour in layer ``l`` (the DkNN's neighbourhood radius), so ``s`` is a soft
"is inside the neighbourhood" count: the loss pulls every layer toward the target class's training
neighbours and pushes the true class's out, while the CW-style margin (Carlini & Wagner 2017) moves the
logits. Restart 0 starts at ``x`` (like BIM), later restarts at a uniform point of the eps-ball. With
``schedule: apgd`` (the default) the steps follow APGD's schedule (Croce & Hein 2020: a step of ``2 * eps``
with momentum, halved per example when the loss stalls, each run's best point kept; :func:`apgd_minimise`);
with ``schedule: constant`` they are ``step_size * sign(grad)``. Every step is projected onto the eps-ball
and [0, 1].

With ``objective: credibility`` (the detection-aware variant; Carlini & Wagner 2017 bypassed ten detectors
by aiming at the detector itself) ``G_l(y)`` becomes the ``n_guides`` training points of *any* class but
``t`` nearest to ``x`` in layer ``l``, and the margin is ``max_{j != t} z_j - z_t``: the DkNN's credibility
of ``t`` is the conformal p-value of its nonconformity ``sum_l (k - #neighbours of class t in layer l)``, so
every non-target neighbour costs the attacker, not only the true class's, and ``t`` has to lead the logits.

Every final iterate is scored by the real DkNN; per example the attack keeps the candidate it scores
worst (the clean input counts as a candidate): a wrong prediction first, ranked by the credibility of
the wrong label (higher is worse for the defender); then, among correct predictions, the lowest
p-value of the true label.

The attacker's knowledge (white-box): the DkNN's training inputs and labels, its layers and ``k``,
and a scoring function, given as a :class:`DkNNKnowledge` through :meth:`DkNNAdaptive.set_knowledge`.
The runner builds it from the DkNN it evaluates::

    attack = create_attack("dknn-adaptive", **params)
    if "adaptive-dknn" in attack.properties:
        attack.set_knowledge(DkNNKnowledge.from_dknn(dknn, splits.train.x, splits.train.y))
    generate(model, attack, x, y, threat, ...)

``dknn`` must be the fitted *and calibrated* DkNN of the same model (the one the DkNN cell scores).
Without knowledge the attack refuses to run (there is no honest knowledge-free fallback).

Cost per example: ``n_targets * restarts * steps`` forward+backward passes
(:meth:`DkNNAdaptive.passes_per_example`), plus ``n_targets * restarts + 1`` DkNN queries (one more per
warm start, :meth:`DkNNAdaptive.set_warm_starts`) and the distances from the batch to every training point
in every indexed layer: once per batch for the label objective, once per restart for the credibility
objective (its guides move with its anchor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, ThreatModel, check_steps
from advbench.params import ParamSpec


class FittedDkNN(Protocol):
    """What the attacker reads of the DkNN it attacks (:class:`advbench.evaluation.dknn.DkNN` has it all).

    A structural type, so that the attack does not import the DkNN's code: the attack's cells carry the
    DkNN's code through the knowledge provider that hands it over (``advbench.suite.cells.dknn_knowledge``).
    """

    layers: tuple[str, ...]
    k: int
    num_classes: int
    y_train: np.ndarray | None

    @property
    def is_fitted(self) -> bool: ...

    @property
    def is_calibrated(self) -> bool: ...

    def predict(self, x: Any) -> Any: ...

    def stored_features(self, layer: str) -> np.ndarray | None: ...


__all__ = ["DkNNAdaptive", "DkNNKnowledge", "FittedDkNN", "dknn_badness"]

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True)
class DkNNKnowledge:
    """What a white-box attacker knows about the DkNN it attacks.

    Attributes:
        x_train: the DkNN's training inputs (N, ...) in [0, 1], in the order given to ``DkNN.fit``.
        y_train: their labels (N,).
        layers: the indexed layers.
        k: neighbours per layer.
        num_classes: number of classes.
        p_values: scores candidates with the real DkNN: inputs (B, ...) -> p-values (B, C) as a numpy
            array (prediction = argmax, ties to the smaller class; credibility = the max).
    """

    x_train: Tensor
    y_train: Tensor
    layers: tuple[str, ...]
    k: int
    num_classes: int
    p_values: Callable[[Tensor], np.ndarray] = field(repr=False)
    #: the DkNN's own copy of a layer's training representations ((N, D), in training order), or ``None``
    #: where it keeps none; the attack computes what it is not given
    train_features: Callable[[str], np.ndarray | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x_train.ndim < 2 or self.y_train.shape != (self.x_train.shape[0],) or self.x_train.shape[0] == 0:
            raise ValueError(
                f"expected non-empty x_train (N, ...) and y_train (N,), got {tuple(self.x_train.shape)} and "
                f"{tuple(self.y_train.shape)}"
            )
        if not self.layers:
            raise ValueError("expected at least one layer; pass the DkNN's layers")
        if not 1 <= self.k <= self.x_train.shape[0]:
            raise ValueError(f"expected 1 <= k <= {self.x_train.shape[0]} (training points), got k={self.k}")

    @classmethod
    def from_dknn(cls, dknn: FittedDkNN, x_train: Tensor, y_train: Tensor) -> DkNNKnowledge:
        """The knowledge of a fitted, calibrated ``dknn`` whose training set was ``(x_train, y_train)``."""
        if not (dknn.is_fitted and dknn.is_calibrated):
            raise ValueError("expected a fitted and calibrated DkNN; call dknn.fit(...).calibrate(...) first")
        y = torch.as_tensor(y_train).long()
        assert dknn.y_train is not None
        if len(y) != len(dknn.y_train) or not np.array_equal(y.cpu().numpy(), dknn.y_train):
            raise ValueError(
                f"y_train ({len(y)} labels) is not the DkNN's training set ({len(dknn.y_train)} labels); "
                f"pass the inputs and labels given to DkNN.fit"
            )
        return cls(
            x_train=torch.as_tensor(x_train),
            y_train=y,
            layers=tuple(dknn.layers),
            k=int(dknn.k),
            num_classes=int(dknn.num_classes),
            p_values=lambda x: dknn.predict(x).p_values,
            train_features=dknn.stored_features,
        )


def dknn_badness(p_values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How bad the DkNN's answer is for the defender, per example: higher = a stronger adversarial.

    A wrong prediction scores ``1 + credibility`` (in [1, 2]); a correct one ``1 - p_y`` (in [0, 1]).
    """
    pred = np.argmax(p_values, axis=1)
    rows = np.arange(len(pred))
    return np.where(pred != y, 1.0 + p_values[rows, pred], 1.0 - p_values[rows, y])


@register_attack("dknn-adaptive", norm="linf", targeted=False, package="advbench")
class DkNNAdaptive(Attack):
    """Adaptive L-inf attack on the DkNN (see the module doc); needs :meth:`set_knowledge` before running.

    Args:
        steps: PGD iterations per (target, restart).
        step_size: pixel units per step; ``None`` means ``2.5 * eps / steps``.
        n_targets: target classes tried (the most credible wrong classes of the clean input).
        restarts: starts per target (0 = the clean input, then uniform random points in the ball).
        n_guides: training neighbours of each class that guide each layer; ``None`` = the DkNN's k.
        temperature: sigmoid temperature, relative to the k-th-neighbour radius.
        logit_weight: weight of the CW margin term (the kNN term is at most 1 per layer).
        kappa: the margin is clamped at ``-kappa`` (logit units).
        schedule: ``"apgd"`` (APGD's per-example step-size schedule; ``step_size`` is its first step, default
            ``2 * eps``) or ``"constant"`` (``step_size`` every step, default ``2.5 * eps / steps``).
        objective: ``"label"`` (push the true class's neighbours out, margin against the true logit) or
            ``"credibility"``, the detection-aware variant: push out the nearest points of *every* class but
            the target's and make the target's logit lead every other, since the DkNN's credibility of the
            target counts only the target class's neighbours in every layer (see the module doc).
    """

    properties: ClassVar[frozenset[str]] = frozenset({"iterative", "gradient-based", "adaptive-dknn"})

    def __init__(
        self,
        *,
        steps: int = 40,
        step_size: float | None = None,
        n_targets: int = 2,
        restarts: int = 2,
        n_guides: int | None = None,
        temperature: float = 0.1,
        logit_weight: float = 0.1,
        kappa: float = 5.0,
        schedule: str = "apgd",
        objective: str = "label",
    ) -> None:
        self.schedule = schedule
        self.objective = objective
        self.steps = steps
        self.step_size = step_size
        self.n_targets = n_targets
        self.restarts = restarts
        self.n_guides = n_guides
        self.temperature = temperature
        self.logit_weight = logit_weight
        self.kappa = kappa
        self._knowledge: DkNNKnowledge | None = None
        self._train_cache: tuple[int, int, dict[str, Tensor]] | None = None
        self._warm: tuple[list[Tensor], dict[bytes, int]] | None = None
        self._validate()

    @classmethod
    def _check_values(cls, params: dict[str, Any]) -> list[str]:
        out = check_steps(params, default_step="2.5*eps/steps")
        for name in ("n_targets", "restarts"):
            if params[name] < 1:
                out.append(f"{name}: expected an integer >= 1, got {params[name]!r}")
        if params["n_guides"] is not None and params["n_guides"] < 1:
            out.append(f"n_guides: expected an integer >= 1 or null for the DkNN's k, got {params['n_guides']!r}")
        if not params["temperature"] > 0:
            out.append(f"temperature: expected a number > 0, got {params['temperature']!r}")
        if not params["logit_weight"] >= 0:
            out.append(f"logit_weight: expected a number >= 0, got {params['logit_weight']!r}")
        if not params["kappa"] >= 0:
            out.append(f"kappa: expected a number >= 0, got {params['kappa']!r}")
        if params["schedule"] not in SCHEDULES:
            out.append(f"schedule: expected one of {', '.join(SCHEDULES)}, got {params['schedule']!r}")
        if params["objective"] not in OBJECTIVES:
            out.append(f"objective: expected one of {', '.join(OBJECTIVES)}, got {params['objective']!r}")
        return out

    @classmethod
    def passes_per_example(cls, params: dict[str, Any]) -> int:
        """Forward+backward passes per example: ``n_targets * restarts * steps``."""
        full = {n: p.default for n, p in ParamSpec.of(cls, keyword_only=True).params.items()} | dict(params)
        return int(full["n_targets"]) * int(full["restarts"]) * int(full["steps"])

    def set_knowledge(self, knowledge: DkNNKnowledge) -> DkNNAdaptive:
        """Give the attacker the DkNN's training set, layers, k and scorer; returns ``self``."""
        if not isinstance(knowledge, DkNNKnowledge):
            raise TypeError(f"expected a DkNNKnowledge, got {type(knowledge).__name__}")
        self._knowledge = knowledge
        self._train_cache = None
        return self

    def set_warm_starts(self, x: Tensor, starts: Sequence[Tensor]) -> DkNNAdaptive:
        """Other attacks' adversarial examples of the inputs ``x``, each shaped like ``x``: every one is a candidate
        the real DkNN scores, and each example's worst of them (for the defender) is the first start of every
        target (the label objective's clean start, the credibility objective's first anchor). :meth:`run` finds
        a batch's rows among ``x`` by their pixels; returns ``self``."""
        rows: dict[bytes, int] = {}
        for s in starts:
            if s.shape != x.shape:
                raise ValueError(f"expected warm starts shaped like x {tuple(x.shape)}, got {tuple(s.shape)}")
        flat = x.detach().cpu().contiguous().view(x.shape[0], -1).numpy()
        for i in range(len(flat)):
            rows.setdefault(flat[i].tobytes(), i)
        self._warm = ([s.detach() for s in starts], rows)
        return self

    def _warm_starts(self, x: Tensor, threat: ThreatModel) -> list[Tensor]:
        """The warm starts of the batch ``x`` (in the threat model's ball around it), or none."""
        if self._warm is None or not self._warm[0]:
            return []
        starts, rows = self._warm
        flat = x.detach().cpu().contiguous().view(x.shape[0], -1).numpy()
        at = [rows.get(flat[i].tobytes()) for i in range(len(flat))]
        missing = [i for i, j in enumerate(at) if j is None]
        if missing:
            raise ValueError(
                f"{len(missing)} input(s) of this batch (first: {missing[0]}) are not among those given to "
                f"set_warm_starts; give the warm starts of the inputs the attack runs on"
            )
        index = torch.tensor(at, dtype=torch.long)
        return [threat.project(s[index].to(x.device, x.dtype), x) for s in starts]

    # -- the attack -------------------------------------------------------------------------------
    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        if not callable(getattr(model, "features", None)):
            raise TypeError(
                f"dknn-adaptive needs an advbench Classifier (with features(x, layers)), got {type(model).__name__}"
            )
        know = self._knowledge
        if know is None:
            raise RuntimeError(
                "dknn-adaptive has no knowledge of the DkNN it attacks; call "
                "attack.set_knowledge(DkNNKnowledge.from_dknn(dknn, x_train, y_train)) before running it"
            )
        clf: Any = model
        if x.shape[0] == 0 or threat.eps == 0:
            return x.clone()
        layers = list(know.layers)
        train = self._train_features(clf, know, x.device)
        y_train = know.y_train.to(x.device)
        m = min(self.n_guides or know.k, int(torch.bincount(y_train, minlength=know.num_classes).min().clamp_min(1)))

        y_np = y.cpu().numpy()
        p_clean = know.p_values(x)
        best, best_bad = x.clone(), dknn_badness(p_clean, y_np)
        keep = (-1, *([1] * (x.ndim - 1)))
        warm = self._warm_starts(x, threat)
        for w in warm:  # other attacks' examples: candidates, and the best one a start
            bad = dknn_badness(know.p_values(w), y_np)
            better = torch.from_numpy(bad > best_bad).to(x.device)
            best, best_bad = torch.where(better.view(keep), w, best), np.maximum(best_bad, bad)
        first, first_bad = best, best_bad.copy()
        with torch.no_grad():
            clean = _flat_features(clf, x, layers)
            soft = torch.softmax(clf(x), 1).cpu().numpy()
        ranking = p_clean + 1e-6 * soft  # credible wrong classes first; the softmax breaks ties
        ranking[np.arange(len(y_np)), y_np] = -np.inf
        targets = np.argsort(-ranking, axis=1, kind="stable")[:, : min(self.n_targets, know.num_classes - 1)]
        classes = [torch.from_numpy(targets[:, r]).to(x.device) for r in range(targets.shape[1])]
        if self.objective == "label":
            # every layer's radius and guides from one distance matrix around the clean input: the true class's
            # points (pushed out, for every target) and each target class's (pulled in)
            groups = [(y, True), *((t, True) for t in classes)]
            with torch.no_grad():
                near = {n: _neighbourhood(clean[n], train[n], y_train, know.k, groups, m) for n in layers}
            radius = {n: near[n][0] for n in layers}
            push = {n: GuideSet.around(clean[n], near[n][1][0]) for n in layers}

        step = 2.5 * threat.eps / self.steps if self.step_size is None else self.step_size
        for r, t in enumerate(classes):
            if self.objective == "label":
                pull = {n: GuideSet.around(clean[n], near[n][1][1 + r]) for n in layers}
            anchor, anchor_bad = first, first_bad

            def loss_of(z: Tensor) -> Tensor:
                return self._loss(clf, z, y, t, layers, radius, push, pull)  # noqa: B023 - used in this iteration

            for s in range(self.restarts):
                x_adv = first.clone()  # the clean input, or the other attacks' best example
                if self.objective == "credibility":
                    # refine: each restart starts from this target's best candidate so far and takes its guides
                    # around it, so the pull moves deeper into the target class's region as it is reached
                    x_adv = anchor.clone()
                    with torch.no_grad():
                        at = clean if s == 0 and not warm else _flat_features(clf, anchor, layers)
                        near = {n: _neighbourhood(at[n], train[n], y_train, know.k, [(t, False), (t, True)], m)
                                for n in layers}  # fmt: skip
                    radius = {n: near[n][0] for n in layers}
                    push = {n: GuideSet.around(at[n], near[n][1][0]) for n in layers}
                    pull = {n: GuideSet.around(at[n], near[n][1][1]) for n in layers}
                elif s > 0:
                    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                    x_adv = threat.project(x + (2 * noise - 1) * threat.eps, x)
                if self.schedule == "apgd":
                    x_adv = apgd_minimise(loss_of, x, x_adv, threat, self.steps, self.step_size)
                else:
                    for _ in range(self.steps):
                        with torch.enable_grad():
                            x_adv.requires_grad_(True)
                            loss = loss_of(x_adv)
                            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
                        x_adv = threat.project(x_adv.detach() - step * grad.sign(), x)
                bad = dknn_badness(know.p_values(x_adv), y_np)
                better = torch.from_numpy(bad > best_bad).to(x.device)
                best = torch.where(better.view(keep), x_adv, best)
                best_bad = np.maximum(best_bad, bad)
                ahead = torch.from_numpy(bad > anchor_bad).to(x.device)
                anchor, anchor_bad = torch.where(ahead.view(keep), x_adv, anchor), np.maximum(anchor_bad, bad)
        return best

    def _loss(
        self,
        clf: Any,
        x_adv: Tensor,
        y: Tensor,
        t: Tensor,
        layers: list[str],
        radius: dict[str, Tensor],
        push: dict[str, GuideSet],
        pull: dict[str, GuideSet],
    ) -> Tensor:
        """The per-example surrogate loss (to minimise)."""
        feats = clf.features(x_adv, list(dict.fromkeys([*layers, *clf.layer_names[-1:]])))
        loss = x_adv.new_zeros(x_adv.shape[0])
        for n in layers:
            # for a 2-d layer h *is* feats[n], which the logit margin below also reads, so autograd sums its
            # gradient parts (own, target, margin) in arrival order. Summing own + target first (through one
            # shared h[:, None] view) gives other floats, as float addition is not associative, and with them
            # a different attack path on a few examples. Neither order is more correct, but changing it changes
            # results (a version bump in advbench/code.lock.json).
            h = feats[n].flatten(1)
            r = radius[n][:, None]
            scale = self.temperature * r.clamp_min(1e-12)
            inside_pushed = torch.sigmoid((r - guide_distances(h, push[n])) / scale).mean(1)
            inside_target = torch.sigmoid((r - guide_distances(h, pull[n])) / scale).mean(1)
            loss = loss + inside_pushed - inside_target
        if self.logit_weight > 0:
            z = feats[clf.layer_names[-1]]
            z_t = z.gather(1, t[:, None])[:, 0]
            if self.objective == "label":
                rival = z.gather(1, y[:, None])[:, 0]
            else:  # the target must lead every other class, not only the true one
                rival = z.scatter(1, t[:, None], float("-inf")).amax(1)
            loss = loss + self.logit_weight * (rival - z_t).clamp_min(-self.kappa)
        return loss

    def _train_features(self, clf: Any, know: DkNNKnowledge, device: torch.device) -> dict[str, Tensor]:
        """The training set's flattened representations, computed once per (model, knowledge)."""
        key = (id(clf), id(know))
        if self._train_cache is None or self._train_cache[:2] != key:
            # the DkNN's exact index already holds them (the same model and chunking, so the same floats):
            # reading them back saves a forward pass over the whole training set per attack cell
            stored = {n: know.train_features(n) for n in know.layers} if know.train_features else {}
            if stored and all(v is not None for v in stored.values()):
                feats = {n: torch.from_numpy(v).to(device) for n, v in stored.items() if v is not None}
            else:
                with torch.no_grad():
                    feats = _flat_features(clf, know.x_train.to(device), list(know.layers))
            self._train_cache = (*key, feats)
        return self._train_cache[2]


#: The step-size schedules of :class:`DkNNAdaptive`: APGD's per-example schedule, or a constant step.
SCHEDULES = ("apgd", "constant")
#: What :class:`DkNNAdaptive`'s surrogate aims at: a wrong DkNN label, or a wrong label the DkNN finds credible.
OBJECTIVES = ("label", "credibility")


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (1-based) after which APGD may halve a step, as AutoAttack's reference code places them
    (``autopgd_base.py``): the first after ``max(int(0.22 * steps), 1)`` iterations, each next period shorter by
    ``max(int(0.03 * steps), 1)`` down to ``max(int(0.06 * steps), 1)`` (Croce & Hein 2020, section 3.2)."""
    period, shortest, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], period
    while at <= steps:
        out.append(at)
        period = max(period - decrease, shortest)
        at += period
    return out


def apgd_minimise(
    loss_of: Callable[[Tensor], Tensor],
    x: Tensor,
    start: Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float | None = None,
    *,
    momentum: float = 0.75,
    rho: float = 0.75,
) -> Tensor:
    """Each example's best point for ``loss_of`` (a loss per example, minimised) in the threat model's ball around
    ``x``, from ``start``, with APGD's step-size schedule (Croce & Hein 2020, Algorithm 1, as AutoAttack's reference
    code runs one restart of it).

    Written here because AutoAttack's APGD (the reference code's and torchattacks') maximises its own losses of
    the logits; this one minimises any per-example loss, so the DkNN surrogate gets the same schedule. The step
    starts at ``2 * eps`` (or ``step_size``); each iteration takes a sign step and mixes it with the previous
    displacement (``momentum``; none on the first); at the checkpoints of :func:`apgd_checkpoints` an example's
    step is halved, and it restarts from its best point, when at most ``rho`` of the iterations since the last
    checkpoint lowered its loss, or when its step was not halved then and its best loss has not improved since.
    ``steps + 1`` gradient evaluations (the start and every iterate).
    """
    shape = (-1, *([1] * (x.ndim - 1)))

    def loss_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = loss_of(z)
            (grad,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach(), grad

    n = x.shape[0]
    eta = torch.full((n,), 2.0 * threat.eps if step_size is None else step_size, dtype=x.dtype, device=x.device)
    checkpoints = set(apgd_checkpoints(steps))
    current = previous = start.detach()
    loss, grad = loss_and_grad(current)
    best, best_loss, best_grad = current, loss, grad
    lowered = torch.zeros(n, dtype=torch.long, device=x.device)
    halved_then = torch.ones(n, dtype=torch.bool, device=x.device)  # no "stalled" verdict at the first checkpoint
    best_then, last_check = best_loss.clone(), 0
    for i in range(1, steps + 1):
        z = threat.project(current - eta.view(shape) * grad.sign(), x)
        a = momentum if i > 1 else 1.0
        previous, current = current, threat.project(current + a * (z - current) + (1 - a) * (current - previous), x)
        new_loss, grad = loss_and_grad(current)
        lowered += (new_loss < loss).long()
        loss = new_loss
        improved = new_loss < best_loss
        best = torch.where(improved.view(shape), current, best)
        best_grad = torch.where(improved.view(shape), grad, best_grad)
        best_loss = torch.where(improved, new_loss, best_loss)
        if i in checkpoints:
            stalled = (lowered <= rho * (i - last_check)) | (~halved_then & (best_loss >= best_then))
            eta = torch.where(stalled, eta / 2, eta)
            current = torch.where(stalled.view(shape), best, current)
            grad = torch.where(stalled.view(shape), best_grad, grad)
            halved_then, best_then, last_check = stalled, best_loss.clone(), i
            lowered.zero_()
    return best


def _neighbourhood(
    q: Tensor, ref: Tensor, ref_y: Tensor, k: int, groups: Sequence[tuple[Tensor, bool]], m: int
) -> tuple[Tensor, list[Tensor]]:
    """Per query: the L2 distance to its k-th nearest reference point, and for each group ``(cls, of_class)``
    (a class per query) the (B, m, D) reference points nearest to it of that class (``of_class``) or of any
    other class; one exact distance matrix per chunk of queries serves them all (rather than one matrix per
    radius and per group).

    The squared distances are ``|q|^2 + |r|^2 - 2 q.r`` from one matrix product, as faiss's exact search
    computes them (``torch.cdist`` copies the reference set per chunk to do the same: 1.5x the time), and
    only the k-th is square-rooted."""
    radius: list[Tensor] = []
    guides: list[list[Tensor]] = [[] for _ in groups]
    ref_sq = (ref * ref).sum(1)
    for start in range(0, q.shape[0], _CHUNK):
        chunk = q[start : start + _CHUNK]
        d = torch.addmm(ref_sq[None, :], chunk, ref.T, alpha=-2).add_((chunk * chunk).sum(1, keepdim=True))
        radius.append(d.topk(k, dim=1, largest=False).values[:, -1].clamp_min(0).sqrt())
        for j, (cls, of_class) in enumerate(groups):
            other = ref_y[None, :] != cls[start : start + _CHUNK, None]
            masked = d.masked_fill(other if of_class else ~other, float("inf"))
            guides[j].append(ref[masked.topk(m, dim=1, largest=False).indices])
    return torch.cat(radius), [torch.cat(g) for g in guides]


@dataclass(frozen=True)
class GuideSet:
    """Each example's guides in one layer, stored relative to a centre near them (the clean input's features).

    ``points[i]`` (m, D) are example ``i``'s guides minus ``centre[i]`` (D,), and ``sq_norms[i]`` their
    squared norms, both computed once per attack: every step then needs one dot product per guide
    (:func:`guide_distances`). Centring keeps the expanded distance accurate: the guides are the clean
    input's nearest training points and the iterate stays within eps of the input, so every vector is of
    the neighbourhood's size rather than of the features' (whose squares would cancel).
    """

    centre: Tensor
    points: Tensor
    sq_norms: Tensor

    @classmethod
    def around(cls, centre: Tensor, guides: Tensor) -> GuideSet:
        """The guides ``guides`` (B, m, D) of ``centre`` (B, D), centred (the tensor is not kept)."""
        points = (guides - centre[:, None, :]).contiguous()
        return cls(centre=centre.detach(), points=points, sq_norms=(points * points).sum(2))


#: Distances below this fraction of the larger vector's norm count as 0 (the iterate is on a guide), where,
#: as for torch's norm, the gradient is 0: the expansion's rounding leaves no direction there
_ON_GUIDE = 1e-3
#: Layers at most this wide take their guide dot products in one ``bmm`` (faster there than a loop)
_NARROW = 32


def guide_distances(h: Tensor, guides: GuideSet) -> Tensor:
    """(B, m): the L2 distance from ``h[i]`` (B, D) to each of its guides, differentiable in ``h``.

    Computed as ``sqrt(|h'|^2 + |g'|^2 - 2 h'.g')`` with ``h' = h - centre`` and the centred guides ``g'`` of
    :class:`GuideSet`: one matrix-vector product per example forward and one backward, each reading the
    (m, D) guides once. The direct ``(h[:, None] - guides).norm(dim=2)`` reads and writes (m, D) differences
    six times per step (``benchmarks/test_bench_adaptive.py`` times both). Agrees with the direct norm to
    float32 rounding of the neighbourhood's size (``tests/test_dknn_adaptive.py``). Written by hand: torch
    has no distance with this gradient, and its ``bmm`` runs the forward products of a wide layer about 4x
    slower than a loop of ``mv`` on one thread.
    """
    return _GuideDistance.apply(h, guides.centre, guides.points, guides.sq_norms)


class _GuideDistance(torch.autograd.Function):
    """:func:`guide_distances`; the guides are constants (no gradient flows to them)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, centre: Tensor, points: Tensor, sq_norms: Tensor) -> Tensor:
        rel = h.detach() - centre
        if points.shape[2] <= _NARROW:
            dots = torch.bmm(points, rel[:, :, None])[:, :, 0]
        else:  # bmm runs these matrix-vector products ~4x slower than a loop of mv on wide layers
            dots = h.new_empty(points.shape[:2])
            for i in range(points.shape[0]):
                torch.mv(points[i], rel[i], out=dots[i])
        rel_sq = (rel * rel).sum(1, keepdim=True)
        sq = (rel_sq + sq_norms - 2 * dots).clamp_min_(0)
        out = sq.sqrt()
        on_guide = sq <= (_ON_GUIDE**2) * torch.maximum(rel_sq, sq_norms)
        out.masked_fill_(on_guide, 0.0)
        ctx.save_for_backward(rel, points, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        rel, points, out = ctx.saved_tensors
        # d|h' - g'_j| / dh = (h' - g'_j) / d_j, so the gradient is h' * sum_j s_j - sum_j s_j g'_j with
        # s_j = grad_j / d_j (0 on a guide, as torch's norm): one vector-matrix product per example
        s = torch.where(out > 0, grad / out.clamp_min(torch.finfo(out.dtype).tiny), 0.0)
        pulled = torch.bmm(s[:, None, :], points)[:, 0]
        return rel * s.sum(1, keepdim=True) - pulled, None, None, None


def _flat_features(model: Any, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {n: [] for n in layers}
    for start in range(0, x.shape[0], _CHUNK):
        feats = model.features(x[start : start + _CHUNK], list(layers))
        for n in layers:
            parts[n].append(feats[n].flatten(1))
    return {n: torch.cat(p) for n, p in parts.items()}
