"""The attack contract: a threat model in, a validated adversarial batch out.

An attack is a class with keyword-only hyper-parameters and one method to write, :meth:`Attack.run`.
Everything every attack must get right lives in the final :meth:`Attack.__call__` (in the spirit of
foolbox 3's ``Attack.__call__``):

* the model is put in eval mode and its train/eval flags are restored afterwards, module by module;
* the model's parameters keep their ``requires_grad`` and their ``.grad`` is left exactly as it was:
  it is set aside during the attack, so nothing can be accumulated into the weights' gradients;
* the clean input is checked against the threat model's bounds;
* attacks whose native threat model is not the L-inf ball (wrapped L2/L0 library attacks) declare
  ``project_output = True`` and have their output projected onto the eps-ball and the box, by
  declaration and never silently;
* the attack gets copies of the inputs and labels; an in-place change to them, to the weights or
  buffers, to torch's global state (grad mode, dtype, threads, backend flags) or to the model's
  hooks, and a ``sys.exit`` inside the attack, fail that attack by name
  (:mod:`advbench.attacks.contract`); the output is checked against advbench's own copy;
* every output is validated by :func:`check_adversarial` (eps-ball, box, finite, shape, dtype) and a
  violation raises :class:`~advbench.errors.ThreatModelError`; nothing is clipped to hide it;
* success (the model's prediction differs from the label), the per-example L-inf distance and the
  wall time are measured.

>>> from advbench.attacks import create_attack
>>> create_attack("pgd", steps=10)
PGD(steps=10, step_size=None, random_start=True, backend='torchattacks')
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from advbench.attacks.contract import AttackContractError, call_plugin, check_unchanged, guard_global_state
from advbench.errors import AdvbenchError, ThreatModelError
from advbench.params import ParamSpec, check_params

__all__ = [
    "ATTACK_PROPERTIES",
    "FLOAT_ATOL",
    "NORM_LABELS",
    "Attack",
    "AttackParamsError",
    "AttackResult",
    "ThreatModel",
    "batch_generator",
    "check_adversarial",
    "create_attack",
    "derive_seed",
    "generate",
]

#: Tolerance of the eps-ball and box checks. float32 has a unit roundoff of 6e-8, so ``x + delta``
#: computed in float32 can leave the ball by a few ulps of x (<= 1.2e-7 for x in [0, 1]); 1e-6 is
#: comfortably above that and far below any meaningful perturbation (1/255 = 3.9e-3).
FLOAT_ATOL = 1e-6

Backend = Literal["torchattacks", "foolbox"]

log = logging.getLogger(__name__)

#: The vocabulary of :attr:`Attack.properties`.
ATTACK_PROPERTIES: frozenset[str] = frozenset(
    {"single-step", "iterative", "gradient-based", "score-based", "decision-based", "adaptive-dknn", "ensemble"}
)


class AttackParamsError(AdvbenchError, ValueError):
    """Hyper-parameters that an attack does not accept; carries every problem found."""

    def __init__(self, attack: str, problems: list[str]) -> None:
        self.attack, self.problems = attack, problems
        body = "; ".join(problems)
        super().__init__(f"attack {attack!r}: {body}")


Norm = Literal["linf", "l2"]
#: how a norm is written in reports
NORM_LABELS: dict[str, str] = {"linf": "L-inf", "l2": "L2"}


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may do: an L-inf or L2 ball of radius ``eps`` (pixel units) inside ``bounds``.

    ``norm="linf"``: every pixel moves by at most ``eps``; ``norm="l2"``: the per-example Euclidean
    norm of the perturbation (over all pixels and channels) is at most ``eps``.
    """

    eps: float
    norm: Norm = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORM_LABELS:
            raise ValueError(f"expected norm 'linf' or 'l2', got {self.norm!r}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"expected bounds (low, high) with low < high, got {self.bounds}")
        if self.norm == "l2":
            if not (isinstance(self.eps, int | float) and 0.0 <= self.eps < float("inf")):
                raise ValueError(f"expected a finite L2 radius eps >= 0 (pixel units), got {self.eps!r}")
        elif not (isinstance(self.eps, int | float) and 0.0 <= self.eps <= hi - lo):
            raise ValueError(
                f"expected eps in [0, {hi - lo}] (pixel units of inputs scaled to {self.bounds}), got {self.eps!r}; "
                f"write 8/255, not 8"
            )

    @property
    def label(self) -> str:
        """``"L-inf eps 0.1"``, ``"L2 eps 0.5"``."""
        return f"{NORM_LABELS[self.norm]} eps {self.eps:g}"

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-example distance ``||x_adv - x||`` in this threat model's norm, shape (N,)."""
        delta = (x_adv - x).flatten(1)
        if delta.shape[0] == 0:
            return delta.new_zeros(0)
        return delta.abs().amax(1) if self.norm == "linf" else delta.norm(p=2, dim=1)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """The closest point to ``x_adv`` in the eps-ball around ``x`` and in the box.

        L2: the perturbation is scaled onto the ball, then clamped to the box (clamping moves each
        coordinate towards ``x``, so the result stays in the ball).
        """
        if self.norm == "linf":
            delta = (x_adv - x).clamp(-self.eps, self.eps)
        else:
            delta = x_adv - x
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
            delta = delta * factor
        return (x + delta).clamp(*self.bounds)


@dataclass
class AttackResult:
    """One attacked batch. ``success[i]``: the model's prediction on ``x_adv[i]`` differs from ``y[i]``."""

    x_adv: Tensor
    success: Tensor  # bool, (N,)
    linf: Tensor  # float, (N,): ||x_adv - x||_inf
    seconds: float
    l2: Tensor | None = None  # float, (N,): ||x_adv - x||_2
    #: minimum-norm attacks only: the norm of each example's own (unfiltered) perturbation where it
    #: fooled the model, NaN where it did not; see :attr:`Attack.minimum_norm`
    raw_norm: Tensor | None = None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


def check_adversarial(
    x: Tensor, x_adv: Tensor, threat: ThreatModel, *, attack: str, batch: int, atol: float = FLOAT_ATOL
) -> None:
    """Raise :class:`ThreatModelError` unless ``x_adv`` is a valid adversarial batch for ``x``.

    Valid: same shape and dtype as ``x``, finite, inside ``threat.bounds`` and within
    ``threat.eps + atol`` of ``x`` in the threat model's norm (L-inf, or the per-example L2 norm).
    The message names the attack, the batch and the worst offending example (its index in the
    batch and the offending value). Nothing is ever clipped.
    """
    where = f"attack {attack} produced an invalid adversarial batch {batch}"
    if not isinstance(x_adv, Tensor):
        raise ThreatModelError(f"{where}: expected a torch.Tensor, got {type(x_adv).__name__}")
    if x_adv.shape != x.shape:
        raise ThreatModelError(f"{where}: expected shape {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if x_adv.dtype != x.dtype:
        raise ThreatModelError(f"{where}: expected dtype {x.dtype}, got {x_adv.dtype}")
    if x.shape[0] == 0:
        return
    flat = x_adv.detach().flatten(1)
    bad = ~torch.isfinite(flat).all(1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ThreatModelError(f"{where}: example {i} has non-finite values (nan or inf)")
    lo, hi = threat.bounds
    below = (lo - flat).amax(1)
    above = (flat - hi).amax(1)
    out = torch.maximum(below, above)
    i = int(out.argmax())
    if out[i] > atol:
        value = float(flat[i].min()) if below[i] >= above[i] else float(flat[i].max())
        raise ThreatModelError(
            f"{where}: example {i} leaves the box {threat.bounds} (value {value:.6g}); "
            f"{int((out > atol).sum())} example(s) are outside it. The attack must keep inputs in bounds"
        )
    dist = threat.distance(x_adv.detach(), x.detach())
    i = int(dist.argmax())
    if dist[i] > threat.eps + atol:
        raise ThreatModelError(
            f"{where}: example {i} is at {NORM_LABELS[threat.norm]} distance {float(dist[i]):.6g} from its clean "
            f"input, "
            f"more than eps={threat.eps:.6g} (+ tolerance {atol:g}); {int((dist > threat.eps + atol).sum())} "
            f"example(s) leave the eps-ball. The attack must project onto the ball"
        )


def check_steps(params: dict[str, Any], *, default_step: str) -> list[str]:
    """Problems with the ``steps`` / ``step_size`` hyper-parameters shared by the iterative attacks."""
    out = []
    if params["steps"] < 1:
        out.append(f"steps: expected an integer >= 1, got {params['steps']!r}")
    if params["step_size"] is not None and not params["step_size"] > 0:
        out.append(
            f"step_size: expected a number > 0 (pixel units) or null for {default_step}, got {params['step_size']!r}"
        )
    return out


def derive_seed(generator: torch.Generator | None) -> int:
    """A 63-bit seed drawn from ``generator`` (the global RNG when None)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block that uses torch's *global* RNG (as torchattacks and foolbox do) from ``seed``.

    The global RNG state is saved and restored around the block, so callers' streams are untouched.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _attack_mode(model: nn.Module, attack: str = "the attack") -> Iterator[None]:
    """Eval mode for the duration; restores the train/eval flags, ``requires_grad``, ``.grad`` and the weights.

    Each parameter's ``.grad`` is set aside (to None) during the attack and put back afterwards, so
    an attack that calls ``loss.backward()`` cannot accumulate into the weights' gradients.
    ``requires_grad`` is left as it is (and restored regardless), so the attack runs the same autograd
    graph as the library called directly; torchattacks and foolbox take gradients with
    ``torch.autograd.grad`` with respect to the input only, which never touches ``.grad``.

    The weights and every buffer (persistent or not) are copied before and compared after; a change
    is restored and raises :class:`~advbench.attacks.contract.AttackContractError` naming the attack
    and the tensors. If the block raised, the weights are restored and its exception propagates.
    """
    training = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    # An attack must not change the model it attacks: keep a copy of the weights and buffers, and
    # put them back (then refuse the batch) if a faulty attack wrote to them.
    before = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers() if k not in before}
    model.eval()
    for p in params:
        p.grad = None
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for p, r, g in zip(params, requires, grads, strict=True):
            p.requires_grad_(r)
            p.grad = g
        for m, t in training.items():
            m.training = t
        changed = _restore_model(model, before, buffers)
        if changed and failed:
            log.warning("%s failed and also modified the model (%s); the weights were restored", attack, changed)
    if changed:
        raise AttackContractError(
            f"{attack} modified the model's weights or buffers ({changed}); an attack may only read the model. "
            f"The weights were restored and this attack's batch is refused"
        )


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors hold the same bits (``torch.equal`` says NaN != NaN, which would blame an attack
    for the NaN weights of the model it was given)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)) if a.numel() else True


def _restore_model(model: nn.Module, before: dict[str, Tensor], buffers: dict[str, Tensor]) -> str:
    """Put back the weights and non-persistent buffers if they changed; returns the changed names ('' if none)."""
    after = model.state_dict(keep_vars=True)
    changed = [k for k, v in before.items() if k not in after or not _same_bits(after[k].detach(), v)]
    changed += [k for k in after if k not in before]
    now_buffers = dict(model.named_buffers())
    changed_buffers = [
        k for k, v in buffers.items() if k not in now_buffers or not _same_bits(now_buffers[k].detach(), v)
    ]
    if changed:
        with torch.no_grad():
            model.load_state_dict(before, strict=False)
    if changed_buffers:
        with torch.no_grad():
            for k in changed_buffers:
                if k in now_buffers and now_buffers[k].shape == buffers[k].shape:
                    now_buffers[k].copy_(buffers[k])
    names = changed + changed_buffers
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


class Attack(abc.ABC):
    """Base class of every attack. Subclasses take keyword-only hyper-parameters and write :meth:`run`.

    The hyper-parameters are read back from attributes of the same name, which gives the ``repr``
    (used as a test id, a log line and a report label) and lets :meth:`check_params` validate them.
    """

    norm: ClassVar[str] = "linf"
    supports_targeted: ClassVar[bool] = False
    #: What the attack is, for the evaluation flags and the worst case (never inferred from names):
    #: a subset of :data:`ATTACK_PROPERTIES`. Empty = undeclared (the flags then skip the attack).
    properties: ClassVar[frozenset[str]] = frozenset()
    #: True only for attacks whose own threat model is not the L-inf ball: their output is projected
    #: onto the ball and the box before validation. An L-inf attack is validated, never clipped.
    project_output: bool = False
    #: True for minimum-norm attacks (Carlini-Wagner, DeepFool, foolbox's minimisation attacks): they
    #: look for the smallest perturbation that fools the model and take no eps. Under a threat model
    #: of their own norm (L2), an example counts at radius eps only if its perturbation is within eps:
    #: the others are replaced by the clean input (filtered, never rescaled), and the norms of the
    #: successful unfiltered perturbations are kept (``AttackResult.raw_norm``) for their median.
    minimum_norm: bool = False

    @classmethod
    def passes_per_example(cls, params: dict[str, Any]) -> int:
        """Forward+backward passes per example under ``params`` (for ``--plan``); default ``steps`` or 1."""
        return int(params.get("steps", 1))

    # -- to write ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        """Return the adversarial batch for ``x``; ``model`` is in eval mode with frozen weights.

        Draw any randomness from ``generator`` (or seed libraries from it with :func:`derive_seed`).
        """

    # -- final -------------------------------------------------------------------------------------
    @typing.final
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator | None = None,
        batch: int = 0,
    ) -> AttackResult:
        """Attack one batch; ``batch`` only labels error messages."""
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"expected a ThreatModel, got {type(threat).__name__}")
        if x.ndim < 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"expected x of shape (N, ...) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x, y = x.detach(), y.detach()
        name = repr(self)
        _check_input(x, threat, attack=name, batch=batch)
        # The contract's own copies: the attack gets fresh tensors, so an in-place write to them is
        # seen (and refused) and never reaches the caller's data or the eps-ball check.
        x_arg, y_arg = x.clone(), y.clone()
        with _attack_mode(model, name), guard_global_state(model, name):
            start = time.perf_counter()
            x_adv = call_plugin(name, self.run, model, x_arg, y_arg, threat, generator)
            seconds = time.perf_counter() - start
            check_unchanged(x, x_arg, what="input x", attack=name, batch=batch)
            check_unchanged(y, y_arg, what="labels y", attack=name, batch=batch)
            raw_norm = None
            if isinstance(x_adv, Tensor):
                x_adv = x_adv.detach()
                if threat.norm != "linf" and self.norm == threat.norm and self.minimum_norm:
                    x_adv, raw_norm = _filter_minimum_norm(model, x, y, x_adv.to(x.dtype), threat)
                elif threat.norm != "linf" and self.norm != threat.norm:
                    raise ThreatModelError(
                        f"attack {name} is an {NORM_LABELS.get(self.norm, self.norm)} attack and the threat model "
                        f"is {threat.label}; choose an attack of that norm (`advbench list attacks` shows each "
                        f"attack's norm) or set the suite entry's norm to {self.norm!r}"
                    )
                elif self.project_output and threat.norm == "linf":
                    x_adv = threat.project(x_adv.to(x.dtype), x)
            check_adversarial(x, x_adv, threat, attack=name, batch=batch)
            with torch.no_grad():
                success = model(x_adv).argmax(1) != y
        linf = (x_adv - x).flatten(1).abs().amax(1) if x.shape[0] else x.new_zeros(0)
        l2 = (x_adv - x).flatten(1).norm(p=2, dim=1) if x.shape[0] else x.new_zeros(0)
        return AttackResult(x_adv=x_adv, success=success, linf=linf, seconds=seconds, l2=l2, raw_norm=raw_norm)

    # -- parameters --------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The hyper-parameters, in signature order, as given to ``__init__``."""
        return {n: getattr(self, n) for n in ParamSpec.of(type(self), keyword_only=True).params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _validate(self) -> None:
        """Raise :class:`AttackParamsError` if the hyper-parameters are invalid (call at the end of ``__init__``)."""
        problems = type(self).check_params(self.params())
        if problems:
            raise AttackParamsError(type(self).__name__, problems)

    @classmethod
    def check_params(cls, params: dict[str, Any], *, backend: str | None = None) -> list[str]:
        """Every problem with ``params`` (and ``backend``), as messages; empty when they are valid.

        Checks names and types against the keyword-only signature of ``__init__`` with
        :func:`advbench.params.check_params`, then values with :meth:`_check_values`.
        """
        spec = ParamSpec.of(cls, keyword_only=True)
        given = dict(params)
        problems: list[str] = []
        if backend is not None:
            if "backend" in spec.params:
                given["backend"] = backend
            else:
                problems.append(f"backend {backend!r} given, but {cls.__name__} has a single implementation; remove it")
        problems += [str(p) for p in check_params(spec, given)]
        if not problems:
            full = {n: p.default for n, p in spec.params.items()} | given
            problems += cls._check_values(full)
        return problems

    @classmethod
    def _check_values(cls, params: dict[str, Any]) -> list[str]:
        """Range checks on well-typed parameters (all of them, defaults filled in); override."""
        return []

    @classmethod
    def describe_params(cls) -> str:
        return ", ".join(f"{n}={p.default!r}" for n, p in ParamSpec.of(cls, keyword_only=True).params.items())


@torch.no_grad()
def _filter_minimum_norm(
    model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, threat: ThreatModel
) -> tuple[Tensor, Tensor]:
    """A minimum-norm attack's output at radius ``threat.eps``: examples outside the ball revert to ``x``.

    Returns the filtered batch and, per example, the norm of the attack's own perturbation where it
    fooled the model (NaN where it did not, or where it left the box or was not finite).
    """
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    lo, hi = threat.bounds
    in_box = ((x_adv >= lo - FLOAT_ATOL) & (x_adv <= hi + FLOAT_ATOL)).flatten(1).all(1)
    safe = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x_adv, x).clamp(lo, hi)
    fooled = (model(safe).argmax(1) != y) & finite & in_box
    dist = threat.distance(safe, x)
    raw = torch.where(fooled, dist, torch.full_like(dist, float("nan")))
    keep = (fooled & (dist <= threat.eps)).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, safe, x), raw


def _check_input(x: Tensor, threat: ThreatModel, *, attack: str, batch: int) -> None:
    if not torch.is_floating_point(x):
        raise ThreatModelError(f"attack {attack}, batch {batch}: expected floating-point pixels, got {x.dtype}")
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ThreatModelError(f"attack {attack}, batch {batch}: the clean input has non-finite values")
    lo, hi = threat.bounds
    if x.min() < lo or x.max() > hi:
        raise ThreatModelError(
            f"attack {attack}, batch {batch}: the clean input spans [{float(x.min()):.4g}, {float(x.max()):.4g}], "
            f"outside the threat model's bounds {threat.bounds}; pass pixels in {threat.bounds} "
            f"(normalisation belongs inside the model)"
        )


def create_attack(name: str, *, backend: str | None = None, **params: Any) -> Attack:
    """Build the registered attack ``name`` with ``params``; raises :class:`AttackParamsError` on bad ones.

    ``backend`` picks the implementation of a built-in (``"torchattacks"``, the default, or
    ``"foolbox"``); other attacks have one implementation and reject it.
    """
    from advbench.attacks import ATTACKS

    factory = ATTACKS.get(name)
    checker = getattr(factory, "check_params", None)
    if callable(checker):
        problems = checker(params, backend=backend)
        if problems:
            raise AttackParamsError(name, problems)
    elif backend is not None:
        raise AttackParamsError(name, [f"backend {backend!r} given, but {name} has a single implementation; remove it"])
    if backend is not None:
        params = {**params, "backend": backend}
    try:
        attack = factory(**params)
    except TypeError as exc:  # a plain callable without check_params
        raise AttackParamsError(name, [str(exc)]) from exc
    if not isinstance(attack, Attack):
        raise TypeError(f"attack {name!r} built a {type(attack).__name__}, expected an advbench Attack")
    return attack


# -- dataset-level generation -----------------------------------------------------------------


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The (CPU) generator of batch ``batch`` under ``seed``: independent streams, same seed -> same stream."""
    state = np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def generate(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    batch_size: int = 250,
    seed: int = 0,
    progress: bool = False,
) -> AttackResult:
    """Attack every example of ``(x, y)`` in batches of ``batch_size``; returns one concatenated result.

    Memory is bounded by one batch on the model's device (results come back to ``x``'s device).
    Batch ``b`` gets the generator ``batch_generator(seed, b)``, so the same seed and batch size give
    the same examples, whatever ran before. ``seconds`` is the sum over batches of the attack time.
    Every batch is validated by the attack (:func:`~advbench.attacks.base.check_adversarial`).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"expected as many labels as inputs, got {x.shape[0]} inputs and {y.shape[0]} labels")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = x.device
    parts: list[AttackResult] = []
    with tqdm(total=x.shape[0], desc=repr(attack), unit="img", disable=not progress, leave=False) as bar:
        for b, start in enumerate(range(0, x.shape[0], batch_size)):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            parts.append(attack(model, xb, yb, threat, generator=batch_generator(seed, b), batch=b))
            bar.update(xb.shape[0])
    if not parts:
        return AttackResult(x.clone(), torch.zeros(0, dtype=torch.bool), x.new_zeros(0), 0.0)
    return AttackResult(
        x_adv=torch.cat([p.x_adv for p in parts]).to(x.device),
        success=torch.cat([p.success for p in parts]).to(x.device),
        linf=torch.cat([p.linf for p in parts]).to(x.device),
        seconds=sum(p.seconds for p in parts),
        l2=torch.cat([p.l2 for p in parts]).to(x.device) if all(p.l2 is not None for p in parts) else None,  # type: ignore[misc]
        raw_norm=(
            torch.cat([p.raw_norm for p in parts]).to(x.device)  # type: ignore[misc]
            if all(p.raw_norm is not None for p in parts)
            else None
        ),
    )
