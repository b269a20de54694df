"""Paired model training: same initial weights, same batches, only alpha differs.

* :func:`init_model` builds an architecture whose initial weights depend only on the seed, the
  architecture and its parameters (never the recipe), so both members of a pair share them.
* :func:`batch_order` is the data order, drawn from a generator seeded by the seed alone; with
  ``augment: crop-flip`` each batch's crops and flips come from :func:`augmentation_generator`
  (seed, epoch, step), so they too are shared by a pair; ``batch_order_hash`` covers both.
* :func:`train_model` minimises the composite loss (docs/method.md, section 3) and records, per epoch, the loss terms,
  the temperatures, the floor rates and the entanglement of every hidden layer on a probe set.

Training is deterministic on CPU: the same seed gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from advbench.config import RecipeConfig
from advbench.errors import NonFiniteLossError
from advbench.models import Classifier, create_model
from advbench.training.loss import CompositeLoss, LossTerms
from advbench.training.regularisers import (
    REGULARISERS,
    Regulariser,
    RegulariserContext,
    create_regulariser,
    resolve_layers,
)
from advbench.training.snnl import entanglement

__all__ = [
    "TrainResult",
    "TrainStep",
    "augment_batch",
    "augmentation_generator",
    "batch_order",
    "build_regularisers",
    "fit_normalization",
    "init_model",
    "layer_widths",
    "make_optimizer",
    "make_scheduler",
    "probe_entanglement",
    "train_model",
    "weights_hash",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model with its per-epoch history (one flat dict per epoch, ready for a DataFrame)."""

    model: Classifier
    history: list[dict[str, Any]]
    initial_weights_hash: str
    final_weights_hash: str
    batch_order_hash: str
    initial_entanglement: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: the regularisers' state (learned temperatures, class centres, ...), for :func:`save_checkpoint`
    regulariser_state: dict[str, Tensor] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record."""
        return self.history[-1] if self.history else {}


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes), in a fixed order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fit_normalization(model: Classifier, x_train: Tensor) -> Classifier:
    """Set the model's per-channel input mean/std from training pixels (N, C, H, W); returns the model."""
    if x_train.dim() != 4 or x_train.shape[1] != model.input_shape[0]:
        raise ValueError(
            f"expected training images of shape (N, {model.input_shape[0]}, H, W), got {tuple(x_train.shape)}"
        )
    x = x_train.detach().to(torch.float64)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    model.set_normalization(mean.tolist(), std.tolist())
    return model


def init_model(
    architecture: str,
    *,
    params: dict[str, Any],
    num_classes: int,
    input_shape: Sequence[int],
    seed: int,
    x_train: Tensor | None = None,
) -> Classifier:
    """A freshly initialised model; weights depend only on ``seed``, ``architecture`` and ``params``.

    With ``x_train`` the input normalisation is fitted to it (:func:`fit_normalization`). The global
    random state is left untouched.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(architecture, num_classes=num_classes, input_shape=(c, h, w), **params)
    if x_train is not None:
        fit_normalization(model, x_train)
    return model


def batch_order(n: int, *, batch_size: int, epochs: int, seed: int) -> Iterator[list[Tensor]]:
    """Per epoch, the list of index batches: a permutation from a generator seeded by ``seed`` alone.

    The last, smaller batch is dropped when it would hold a single example (the SNNL needs two).
    """
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        batches = list(perm.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()
        yield batches


def make_optimizer(params: Any, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params``."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {recipe.optimizer!r}")


def make_scheduler(opt: torch.optim.Optimizer, recipe: RecipeConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The recipe's learning-rate schedule over ``recipe.epochs`` (stepped once per epoch); None if constant."""
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    if recipe.schedule == "step":
        marks = sorted({max(1, round(f * recipe.epochs)) for f in recipe.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=recipe.gamma)
    return None


def augmentation_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The CPU generator of one batch's augmentation: a function of the seed, epoch and step only.

    Never of alpha or the model, so the members of a pair see the same crops and flips.
    """
    state = np.random.SeedSequence([seed, 0xA06, epoch, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def augment_batch(x: Tensor, *, padding: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random crop after zero padding by ``padding`` pixels, then a horizontal flip with probability 1/2.

    Returns the augmented batch and the draws (N, 3: row offset, column offset, flip) for hashing.
    The draws come from ``generator`` on the CPU; the images stay on their device.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    draws = torch.stack([dy, dx, flip.long()], 1)
    if padding:
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (N, H)
        cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (N, W)
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    return x.contiguous(), draws


@torch.no_grad()
def probe_entanglement(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    layers: Sequence[str] | None = None,
    distance: str = "euclidean",
    chunk: int = 500,
) -> dict[str, tuple[float, float]]:
    """Per hidden layer, ``(entanglement, minimising T)`` of the model's representations of ``x``."""
    names = list(model.hidden_layers if layers is None else layers)
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    device = next(model.parameters()).device
    for i in range(0, len(y), chunk):
        feats = model.features(x[i : i + chunk].to(device), names)
        for n in names:
            parts[n].append(feats[n].reshape(feats[n].shape[0], -1))
    model.train(was_training)
    y = y.to(device)
    return {n: entanglement(torch.cat(parts[n]), y, distance=distance) for n in names}  # type: ignore[arg-type]


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _check_finite(value: Tensor, *, name: str, epoch: int, step: int, term: str) -> None:
    if not torch.isfinite(value):
        raise NonFiniteLossError(
            f"model {name!r}: the {term} term of the loss is {value.item()} at epoch {epoch}, step {step}. "
            f"Lower the learning rate or |alpha|, or check the temperature settings."
        )


class TrainStep:
    """One optimisation step of the composite loss: forward, finiteness checks, weight and temperature updates.

    Owns the loss, the weights' optimiser and (when the SNNL is on and the temperature is learned) the
    temperatures' optimiser. :func:`train_model` and the training benchmark both run exactly this.
    """

    def __init__(self, model: Classifier, recipe: RecipeConfig, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(layers)
        others = build_regularisers(model, recipe)
        self.loss_fn = CompositeLoss(recipe.snnl, self.layers, others).to(next(model.parameters()).device)
        self.opt = make_optimizer(model.parameters(), recipe)
        self.scheduler = make_scheduler(self.opt, recipe)
        self.regularisers = self.loss_fn.regularisers()
        #: each regulariser's own optimiser (the SNNL's learned temperatures: Adam at temperature_lr)
        self.reg_opts = [opt for reg in self.regularisers.values() if (opt := reg.make_optimizer()) is not None]

    def __call__(self, xb: Tensor, yb: Tensor, *, name: str = "model", epoch: int = 0, step: int = 0) -> LossTerms:
        terms = self.loss_fn(self.model, xb, yb)
        _check_finite(terms.ce, name=name, epoch=epoch, step=step, term="cross-entropy (CE)")
        for layer, s in terms.snnl.items():
            _check_finite(s, name=name, epoch=epoch, step=step, term=f"SNNL of layer {layer!r}")
        for key, s in terms.regularisers.items():
            _check_finite(s, name=name, epoch=epoch, step=step, term=f"regulariser {key!r}")
        _check_finite(terms.loss, name=name, epoch=epoch, step=step, term="total")
        self.opt.zero_grad(set_to_none=True)
        for opt in self.reg_opts:
            opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.opt.step()
        for opt in self.reg_opts:
            opt.step()
        for reg in self.regularisers.values():
            reg.after_step()
        return terms

    def regulariser_state(self) -> dict[str, Tensor]:
        """Every regulariser's state (temperatures, centres, ...) as ``"{name}.{key}"`` -> tensor, for a checkpoint."""
        return {f"{n}.{k}": v.detach() for n, reg in self.regularisers.items() for k, v in reg.state_dict().items()}


@torch.no_grad()
def layer_widths(model: Classifier, layers: Sequence[str]) -> dict[str, int]:
    """The flattened width of each of ``layers``, from one forward pass of a zero input in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = model.features(torch.zeros(1, *model.input_shape, device=device), list(layers))
    model.train(was_training)
    return {la: int(feats[la][0].numel()) for la in layers}


def build_regularisers(model: Classifier, recipe: RecipeConfig) -> dict[str, Regulariser]:
    """The recipe's ``regularisers`` list built for ``model``, keyed by name (``name#i`` if a name repeats)."""
    if not recipe.regularisers:
        return {}
    hidden = list(model.hidden_layers)
    plans = []
    for i, cfg in enumerate(recipe.regularisers):
        factory = REGULARISERS.get(cfg.name)
        layers = resolve_layers(factory, hidden, cfg.layers)
        bad = [la for la in layers if la not in hidden]
        if bad:
            raise ValueError(
                f"regularisers[{i}] ({cfg.name!r}): layers {bad} are not hidden layers of {model.arch!r}; "
                f"choose from {hidden}"
            )
        plans.append((cfg, layers))
    dims = layer_widths(model, sorted({la for _, layers in plans for la in layers}))
    out: dict[str, Regulariser] = {}
    for i, (cfg, layers) in enumerate(plans):
        key = cfg.name if cfg.name not in out else f"{cfg.name}#{i}"
        ctx = RegulariserContext(
            layers=layers, weight=cfg.weight, num_classes=model.num_classes, dims={la: dims[la] for la in layers}
        )
        out[key] = create_regulariser(cfg.name, ctx, cfg.params)
    return out


def train_model(
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    recipe: RecipeConfig,
    *,
    seed: int,
    probe: tuple[Tensor, Tensor] | None,
    name: str = "model",
    progress: bool = False,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train ``model`` in place on the composite loss of ``recipe``; returns it with its history.

    ``device`` (default: where the model is) takes the model, the loss's temperatures, the
    training set and the probe set; batch order and initial weights do not depend on it.

    Batches come from :func:`batch_order` (seed alone, so a pair sees the same ones). Regularised
    layers are ``recipe.snnl.layers`` or every hidden layer (never the logits). The history has, per
    epoch: ``epoch``, ``loss``, ``ce``, ``train_accuracy``, ``seconds`` and, per layer L,
    ``snnl/L``, ``temperature/L``, ``floor/L`` (NaN for the baseline, which skips the SNNL) and, with
    a probe set, ``entanglement/L`` and ``entanglement_T/L`` for every hidden layer. The recipe's
    ``regularisers`` add ``{name}/{term}`` (their unweighted terms) and ``{name}/{metric}``.
    Raises :class:`~advbench.errors.NonFiniteLossError` naming the term that went non-finite.
    """
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} examples but y_train has {len(y_train)}")
    if len(y_train) < 2:
        raise ValueError(f"need at least 2 training examples, got {len(y_train)}")
    cfg = recipe.snnl
    layers = list(cfg.layers) if cfg.layers is not None else list(model.hidden_layers)
    bad = [la for la in layers if la not in model.hidden_layers]
    if bad:
        raise ValueError(
            f"snnl.layers {bad} are not hidden layers of {model.arch!r}; choose from {list(model.hidden_layers)}"
        )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    if dev.type != "cpu":  # one copy on the accelerator, not one transfer per batch
        x_train, y_train = x_train.to(dev), y_train.to(dev)
        probe = (probe[0].to(dev), probe[1].to(dev)) if probe is not None else None
    train_step = TrainStep(model, recipe, layers)
    loss_fn = train_step.loss_fn

    init_hash = weights_hash(model)
    order_hash = hashlib.sha256()
    disable = not progress or not sys.stderr.isatty()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    initial: dict[str, float] = {}

    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if probe is not None:
            initial = {k: v for k, (v, _) in probe_entanglement(model, *probe, distance=cfg.distance).items()}
        epochs = tqdm(
            enumerate(batch_order(len(y_train), batch_size=recipe.batch_size, epochs=recipe.epochs, seed=seed), 1),
            total=recipe.epochs,
            desc=f"train {name}",
            unit="epoch",
            disable=disable,
        )
        for epoch, batches in epochs:
            t0 = time.perf_counter()
            model.train()
            sums: dict[str, float] = {}
            extra_keys: dict[str, None] = {}  # the other regularisers' terms and metrics, in order
            correct = seen = 0
            for step, idx in enumerate(
                tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=disable)
            ):
                order_hash.update(idx.numpy().tobytes())
                if x_train.device != idx.device:
                    idx = idx.to(x_train.device)
                xb, yb = x_train[idx], y_train[idx]
                if recipe.augment == "crop-flip":
                    gen = augmentation_generator(seed, epoch, step)
                    xb, draws = augment_batch(xb, padding=recipe.crop_padding, generator=gen)
                    order_hash.update(draws.numpy().tobytes())
                terms = train_step(xb, yb, name=name, epoch=epoch, step=step)
                n = len(yb)
                seen += n
                correct += int((terms.logits.detach().argmax(1) == yb).sum())
                _acc(sums, "loss", terms.loss.item() * n)
                _acc(sums, "ce", terms.ce.item() * n)
                for layer in terms.snnl:
                    _acc(sums, f"snnl/{layer}", terms.snnl[layer].item() * n)
                    _acc(sums, f"floor/{layer}", terms.floor[layer] * n)
                for key, value in terms.regularisers.items():
                    _acc(sums, key, value.item() * n)
                    extra_keys.setdefault(key)
                for rname, reg in train_step.loss_fn.other_regularisers().items():
                    for key, v in reg.metrics.items():
                        _acc(sums, f"{rname}/{key}", v * n)
                        extra_keys.setdefault(f"{rname}/{key}")
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": sums["loss"] / seen,
                "ce": sums["ce"] / seen,
                "train_accuracy": correct / seen,
            }
            for layer in layers:
                record[f"snnl/{layer}"] = sums.get(f"snnl/{layer}", math.nan) / seen
                record[f"temperature/{layer}"] = loss_fn.temperature(layer).value if cfg.alpha != 0 else math.nan
                record[f"floor/{layer}"] = sums.get(f"floor/{layer}", math.nan) / seen
            for key in extra_keys:
                record[key] = sums[key] / seen
            if probe is not None:
                for layer, (v, t) in probe_entanglement(model, *probe, distance=cfg.distance).items():
                    record[f"entanglement/{layer}"] = v
                    record[f"entanglement_T/{layer}"] = t
            record["lr"] = train_step.opt.param_groups[0]["lr"]
            if train_step.scheduler is not None:
                train_step.scheduler.step()
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            log.info("%s epoch %d/%d: %s", name, epoch, recipe.epochs, _fmt(record))
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        initial_weights_hash=init_hash,
        final_weights_hash=weights_hash(model),
        batch_order_hash=order_hash.hexdigest(),
        initial_entanglement=initial,
        seconds=time.perf_counter() - start,
        regulariser_state=train_step.regulariser_state(),
    )


def _acc(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _fmt(record: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch")
