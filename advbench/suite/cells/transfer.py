"""Cell kind ``transfer``: one adversarial set evaluated on every model of a seed."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from advbench.evaluation.transfer import outcomes_for, predict
from advbench.suite.cells import handler
from advbench.suite.cells.store import adversarial_set, trained_model

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["clean_predictions", "run_transfer"]


def clean_predictions(
    store: ArtefactStore, key: tuple[str, int, str], model: torch.nn.Module, x_clean: torch.Tensor
) -> np.ndarray:
    """A model's predictions on the clean attacked examples, computed once per process (``key``: model, seed and
    the examples' digest). Every transfer cell of a seed reads the same examples (the suite's fixed subset), and
    :func:`~advbench.evaluation.transfer.predict` gives the same labels for the same inputs, so reusing them
    changes no bit of the outcomes; it saves a pass over the examples per target and cell."""
    if key not in store.clean_predictions:
        store.clean_predictions[key] = predict(model, x_clean)
    return store.clean_predictions[key]


@handler("transfer")
def run_transfer(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """One adversarial set on every model of ``target_seed``: its own seed (the paired, shared-path
    design; table ``outcomes``) or another seed (the independent-training control; ``cross_outcomes``)."""
    seed, source, akey, eps = cell.params["seed"], cell.params["source"], cell.params["attack"], cell.params["eps"]
    target_seed = cell.params.get("target_seed", seed)
    table = "outcomes" if target_seed == seed else "cross_outcomes"
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.add(table, pd.read_csv(entry.file("outcomes.csv.gz")).assign(target_seed=target_seed))
            return True
        except (OSError, ValueError) as exc:
            ctx.cache.discard(cell.kind, cell.key, f"unreadable outcomes: {exc}")
    adv = adversarial_set(ctx, store, seed, source, akey, eps)
    test = ctx.splits.test
    idx = adv["indices"].long()
    # the targets the cell names (every model of the seed, or those whose training did not fail), each with the
    # model and seed it is
    who = {name: (name, target_seed) for name in cell.spec["targets"]}
    src = source
    if target_seed != seed:
        # the source (of `seed`) gives source_success; the targets are the models of `target_seed`
        src = f"{source}@seed{seed}"
        who = {src: (source, seed), **who}
    targets = {label: trained_model(ctx, store, name, s) for label, (name, s) in who.items()}
    x_clean = test.x[idx].to(ctx.device)
    examples = hashlib.sha256(idx.numpy().tobytes()).hexdigest()
    clean = {
        label: clean_predictions(store, (*who[label], examples), model, x_clean) for label, model in targets.items()
    }
    df = outcomes_for(
        seed=seed,
        source=src,
        attack=akey,
        eps=eps,
        x_clean=x_clean,
        clean_predictions=clean,
        x_adv=adv["x_adv"].to(ctx.device),
        y=test.y[idx].to(ctx.device),
        targets=targets,
        examples=idx.numpy(),
        norm=next(a.norm for a in ctx.suite.attacks if a.key == akey),
    )
    if src != source:
        df = df[df["target"] != src].assign(source=source).reset_index(drop=True)
    with ctx.cache.writer("transfer", cell.key, {"label": cell.label}) as folder:
        df.to_csv(folder / "outcomes.csv.gz", index=False)
    store.add(table, df.assign(target_seed=target_seed))
    return False
