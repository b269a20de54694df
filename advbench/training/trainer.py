"""Paired model training: same initial weights, same batches, only alpha differs.

* :func:`init_model` builds an architecture whose initial weights depend only on the seed, the
  architecture and its parameters (never the recipe), so both members of a pair share them.
* :func:`batch_order` is the data order, drawn from a generator seeded by the seed alone.
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

import torch
from torch import Tensor
from tqdm.auto import tqdm

from advbench.config import RecipeConfig
from advbench.errors import NonFiniteLossError
from advbench.models import Classifier, create_model
from advbench.training.loss import CompositeLoss, LossTerms
from advbench.training.snnl import entanglement

__all__ = [
    "TrainResult",
    "TrainStep",
    "batch_order",
    "fit_normalization",
    "init_model",
    "make_optimizer",
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
        self.loss_fn = CompositeLoss(recipe.snnl, self.layers).to(next(model.parameters()).device)
        self.opt = make_optimizer(model.parameters(), recipe)
        t_params = self.loss_fn.temperature_parameters()
        self.t_opt = (
            torch.optim.Adam(t_params, lr=recipe.snnl.temperature_lr) if t_params and recipe.snnl.alpha != 0 else None
        )

    def __call__(self, xb: Tensor, yb: Tensor, *, name: str = "model", epoch: int = 0, step: int = 0) -> LossTerms:
        terms = self.loss_fn(self.model, xb, yb)
        _check_finite(terms.ce, name=name, epoch=epoch, step=step, term="cross-entropy (CE)")
        for layer, s in terms.snnl.items():
            _check_finite(s, name=name, epoch=epoch, step=step, term=f"SNNL of layer {layer!r}")
        _check_finite(terms.loss, name=name, epoch=epoch, step=step, term="total")
        self.opt.zero_grad(set_to_none=True)
        if self.t_opt is not None:
            self.t_opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.opt.step()
        if self.t_opt is not None:
            self.t_opt.step()
            for layer in self.layers:
                self.loss_fn.temperature(layer).clamp_()
        return terms


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
    a probe set, ``entanglement/L`` and ``entanglement_T/L`` for every hidden layer.
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
            correct = seen = 0
            for step, idx in enumerate(
                tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=disable)
            ):
                order_hash.update(idx.numpy().tobytes())
                if x_train.device != idx.device:
                    idx = idx.to(x_train.device)
                xb, yb = x_train[idx], y_train[idx]
                terms = train_step(xb, yb, name=name, epoch=epoch, step=step)
                n = len(yb)
                seen += n
                correct += int((terms.logits.detach().argmax(1) == yb).sum())
                _acc(sums, "loss", terms.loss.item() * n)
                _acc(sums, "ce", terms.ce.item() * n)
                for layer in terms.snnl:
                    _acc(sums, f"snnl/{layer}", terms.snnl[layer].item() * n)
                    _acc(sums, f"floor/{layer}", terms.floor[layer] * n)
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
            if probe is not None:
                for layer, (v, t) in probe_entanglement(model, *probe, distance=cfg.distance).items():
                    record[f"entanglement/{layer}"] = v
                    record[f"entanglement_T/{layer}"] = t
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
    )


def _acc(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _fmt(record: dict[str, Any]) -> str:
    """``key=value`` pairs of an epoch record, without the terms the model does not have (NaN)."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k != "epoch" and not (isinstance(v, float) and math.isnan(v))
    )
