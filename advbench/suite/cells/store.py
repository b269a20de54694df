"""What every cell kind reads: its inputs' artefacts, from this process's store or else from the cache.

A cell may run in a process that did not run its dependencies (a Ray worker), so every input a cell
reads can come back from the cache. This module is in every cell kind's code closure: keep it to
reading and writing artefacts; what a kind computes belongs in its own module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from advbench.config import ModelConfig
from advbench.errors import CacheError
from advbench.io import check_suite_path
from advbench.models import Classifier, create_model
from advbench.models.external import build_brought_model, load_weights
from advbench.suite.cache import CacheEntry
from advbench.training.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["adversarial_set", "external_model", "read_json", "required_entry", "trained_model"]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: {exc}") from exc


def required_entry(ctx: CellContext, cell: Cell) -> CacheEntry:
    """The verified cache entry of ``cell``, which a later cell needs; an error if it is missing."""
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is None:
        raise CacheError(
            f"{cell.label} is not in the cache at {ctx.cache.root}, but a later cell needs it; "
            f"run the suite again to recompute it"
        )
    return entry


def trained_model(ctx: CellContext, store: ArtefactStore, name: str, seed: int) -> Classifier:
    """The trained model: from the store, else from its checkpoint in the cache (or, brought by the user, built)."""
    model = store.models.get((name, seed))
    mcfg = next((m for m in ctx.suite.models if m.name == name), None)
    if model is None and mcfg is not None and mcfg.recipe is None:
        model = external_model(ctx, mcfg)
        store.models[(name, seed)] = model
    if model is None:
        entry = required_entry(ctx, ctx.cell("train", model=name, seed=seed))
        model, _ = load_checkpoint(entry.path / "checkpoint")
        model = model.to(ctx.device).eval()
        store.models[(name, seed)] = model
    return model


def adversarial_set(
    ctx: CellContext, store: ArtefactStore, seed: int, source: str, akey: str, eps: float
) -> dict[str, torch.Tensor]:
    """An adversarial set: from the store, else from the cache."""
    k = (seed, source, akey, eps)
    if k not in store.adversarial:
        entry = required_entry(ctx, ctx.cell("attack", seed=seed, model=source, attack=akey, eps=eps))
        store.adversarial[k] = load_file(str(entry.file("adv.safetensors")))
    return store.adversarial[k]


def external_model(ctx: CellContext, mcfg: ModelConfig) -> Classifier:
    """A model brought by the user (``recipe: none``): built by its builder or architecture, weights loaded.

    The weights file obeys the suite path rule and must match the suite's sha256; it is read as
    safetensors only.
    """
    splits = ctx.splits
    what = f"model {mcfg.name!r}"
    model: Any
    if mcfg.builder is not None:
        model = build_brought_model(
            mcfg.builder,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            params=dict(mcfg.params),
            what=what,
        )
    else:
        assert mcfg.architecture is not None  # the config requires one of the two
        model = create_model(
            mcfg.architecture, num_classes=splits.num_classes, input_shape=splits.input_shape, **mcfg.params
        )
    if mcfg.weights is not None:
        path = check_suite_path(mcfg.weights.path, field=f"models[{mcfg.name}].weights.path", allowed_roots=["."])
        load_weights(model, path, mcfg.weights.sha256, what=what)
    return model.to(ctx.device).eval()  # type: ignore[no-any-return]
