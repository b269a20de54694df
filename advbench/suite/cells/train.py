"""Cell kind ``train``: train one model of the suite on one seed (or load one brought by the user)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd
import torch

from advbench.config import ModelConfig
from advbench.errors import CacheError
from advbench.suite.cells import handler
from advbench.suite.cells.store import external_model, read_json
from advbench.training.checkpoint import load_checkpoint, save_checkpoint
from advbench.training.trainer import init_model, train_model

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["run_train"]

#: Validation examples the entanglement probe reads after each epoch.
_N_PROBE = 500


def _run_external(ctx: CellContext, cell: Cell, store: ArtefactStore, mcfg: ModelConfig) -> bool:
    """The train cell of a model brought by the user: load it (nothing is trained) and record its card."""
    name, seed = cell.params["model"], cell.params["seed"]
    cached = ctx.cache.exists(cell.kind, cell.key)
    model = external_model(ctx, mcfg)
    if not cached:
        card = {"label": name, "external": True, **cell.spec["model"]}
        if mcfg.weights is not None:
            card["weights_path"] = mcfg.weights.path
        with ctx.cache.writer("train", cell.key, {"label": cell.label}) as folder:
            (folder / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    store.models[(name, seed)] = model
    return cached


@handler("train")
def run_train(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    name, seed = cell.params["model"], cell.params["seed"]
    mcfg = next(m for m in ctx.suite.models if m.name == name)
    if mcfg.recipe is None or mcfg.architecture is None:
        return _run_external(ctx, cell, store, mcfg)
    splits = ctx.splits
    entry = ctx.cache.get(cell.kind, cell.key)
    cached = entry is not None
    if entry is None:
        model = init_model(
            mcfg.architecture,
            params=mcfg.params,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            seed=seed,
            x_train=splits.train.x,
        )
        result = train_model(
            model,
            splits.train.x,
            splits.train.y,
            mcfg.recipe,
            seed=seed,
            probe=_probe(ctx),
            name=f"{name}/seed{seed}",
            progress=ctx.options.progress,
            device=ctx.device,
        )
        card = {
            "label": name,
            "architecture": mcfg.architecture,
            "params": mcfg.params,
            "recipe": mcfg.recipe.model_dump(),
            "seed": seed,
            "data": cell.spec["data"],
            "code": cell.spec["code"],
            "final": result.history[-1] if result.history else {},
            "init_weight_hash": result.initial_weights_hash,
            "batch_order_hash": result.batch_order_hash,
        }
        with ctx.cache.writer("train", cell.key, {"label": cell.label}) as folder:
            save_checkpoint(result.model, folder / "checkpoint", card, regularisers=result.regulariser_state)
            (folder / "history.json").write_text(pd.DataFrame(result.history).to_json(orient="records"))
        entry = ctx.cache.get("train", cell.key)
        if entry is None:
            raise CacheError(f"the checkpoint of {cell.label} could not be read back from {ctx.cache.root}")
    # Fresh and cached runs both continue from the stored checkpoint, so their results are identical.
    try:
        model, _card = load_checkpoint(entry.path / "checkpoint")
    except CacheError as exc:
        if not cached:
            raise
        # its checksums matched the cache manifest, but the checkpoint itself was refused: recompute
        ctx.cache.discard("train", cell.key, str(exc))
        return run_train(ctx, cell, store)
    history = pd.DataFrame(read_json(entry.file("history.json")))
    store.models[(name, seed)] = model.to(ctx.device).eval()
    store.add("training", history.assign(model=name, seed=seed))
    return cached


def _probe(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entanglement probe set: the first 500 examples of the validation split, never test images.

    Without a validation split (``dataset.splits.validation: 0``) there is no probe: the training
    history has no ``entanglement/<layer>`` columns and the claims that read them are not applicable.
    Holding probe examples out of the training set silently would change the training data, so a
    suite that wants the probe declares ``validation``.
    """
    val = ctx.splits.validation
    if val is None or len(val) == 0:
        return None
    n = min(_N_PROBE, len(val))
    return val.x[:n], val.y[:n]
