"""Cell kind ``clean-eval``: a trained model's clean accuracy and the input-gradient checks for masking."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd
import torch

from advbench.errors import CacheError
from advbench.evaluation.flags import FLAG_COLUMNS, flags_frame, gradient_flags
from advbench.evaluation.transfer import predict
from advbench.suite.cells import handler
from advbench.suite.cells.store import read_json, trained_model

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["run_clean_eval"]


@handler("clean-eval")
def run_clean_eval(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """Clean test (and validation) accuracy of one model, and the gradient checks on ``n_grad`` test examples."""
    name, seed = cell.params["model"], cell.params["seed"]
    entry = ctx.cache.get(cell.kind, cell.key)
    cached = entry is not None
    if entry is None:
        model = trained_model(ctx, store, name, seed)
        test, val = ctx.splits.test, ctx.splits.validation
        idx = torch.from_numpy(ctx.transfer_indices[: cell.spec["n_grad"]])
        record = {
            "model": name,
            "seed": seed,
            "test_accuracy": _accuracy(model, test.x, test.y, ctx.device),
            "n": len(test),
        }
        if val is not None:  # what a hyper-parameter choice reads (suites/alpha-sweep.yaml), never the test split
            record["validation_accuracy"] = _accuracy(model, val.x, val.y, ctx.device)
            record["n_validation"] = len(val)
        flags = flags_frame(
            gradient_flags(model, test.x[idx].to(ctx.device), test.y[idx].to(ctx.device), name=name, seed=seed)
        )
        with ctx.cache.writer(cell.kind, cell.key, {"label": cell.label}) as folder:
            (folder / "clean.json").write_text(json.dumps(record))
            flags.to_csv(folder / "gradient_flags.csv", index=False)
        entry = ctx.cache.get(cell.kind, cell.key)
        if entry is None:
            raise CacheError(f"the clean evaluation of {name} seed={seed} could not be read back")
    store.add("clean", pd.DataFrame([read_json(entry.file("clean.json"))]))
    flags = pd.read_csv(entry.file("gradient_flags.csv"))
    if len(flags):
        store.add("gradient_flags", flags.reindex(columns=list(FLAG_COLUMNS)))
    return cached


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    return float((predict(model, x.to(device)) == y.numpy()).mean())
