"""Cell kind ``convergence``: does an attack on the DkNN find more with more iterations?

For an attack with the ``adaptive-dknn`` property, at one eps on one model of the suite's first seed, the
attack is run again on the first ``n_examples`` of the attacked examples with ``factor`` times its steps and
restarts (every parameter of those names it has). Both adversarial sets, the attack cell's own and the
longer one, are scored by the real DkNN the attack targets; the table ``convergence`` records both DkNN
accuracies on those examples and whether the longer attack lowered it by more than ``tolerance``
(the attack has not converged there: the robust accuracy the report shows is an over-estimate).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from advbench.attacks.base import ThreatModel, create_attack, generate
from advbench.attacks.contract import call_plugin
from advbench.params import ParamSpec
from advbench.suite.cells import KNOWLEDGE, handler
from advbench.suite.cells.attack import give_warm_starts
from advbench.suite.cells.dknn_index import dknn_index
from advbench.suite.cells.store import adversarial_set, trained_model

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["CONVERGENCE_COLUMNS", "SCALED_PARAMS", "longer_params", "run_convergence"]

#: The parameters multiplied by the check's factor, where the attack has them.
SCALED_PARAMS = ("steps", "restarts")
#: Columns of the ``convergence`` table.
CONVERGENCE_COLUMNS = (
    "seed",
    "model",
    "attack",
    "eps",
    "n",
    "factor",
    "params",
    "dknn_accuracy",
    "dknn_accuracy_longer",
    "drop",
    "tolerance",
    "converged",
    "seconds",
)


def longer_params(attack_class: type, params: dict[str, Any], factor: int) -> dict[str, Any]:
    """``params`` with every parameter of :data:`SCALED_PARAMS` the attack takes multiplied by ``factor``
    (its default where the suite leaves it out); empty when the attack takes none of them."""
    spec = ParamSpec.of(attack_class, keyword_only=True).params
    scaled = {name: int(params.get(name, spec[name].default)) * factor for name in SCALED_PARAMS if name in spec}
    return dict(params) | scaled if scaled else {}


def _dknn_accuracy(dknn: Any, x: torch.Tensor, y: np.ndarray) -> float:
    """The DkNN's accuracy on ``x``: its prediction is the class of the largest p-value (ties: the smaller class)."""
    pred = np.argmax(np.asarray(dknn.predict(x).p_values), axis=1)
    return float(np.mean(pred == y))


@handler("convergence")
def run_convergence(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.add("convergence", pd.read_csv(entry.file("convergence.csv")))
            return True
        except (OSError, ValueError) as exc:
            ctx.cache.discard(cell.kind, cell.key, f"unreadable convergence table: {exc}")
    cfg = ctx.suite.evaluations.convergence
    acfg = next(a for a in ctx.suite.attacks if a.key == akey)
    model = trained_model(ctx, store, source, seed)
    n = min(cfg.n_examples, len(ctx.transfer_indices))
    idx = torch.from_numpy(ctx.transfer_indices[:n])
    test = ctx.splits.test
    x, y = test.x[idx].to(ctx.device), test.y[idx].to(ctx.device)
    base = adversarial_set(ctx, store, seed, source, akey, eps)
    if not torch.equal(base["indices"][:n].long(), idx.long()):
        raise RuntimeError(f"{cell.label}: the attack cell's examples are not the first {n} of the fixed subset")
    attack = call_plugin(acfg.name, create_attack, acfg.name, backend=acfg.backend, **acfg.params)
    params = longer_params(type(attack), acfg.params, cfg.factor)
    t0 = time.perf_counter()
    dknn = dknn_index(ctx, store, source, seed, model)
    y_np = y.cpu().numpy()
    row: dict[str, Any] = {
        "seed": seed,
        "model": source,
        "attack": akey,
        "eps": eps,
        "n": n,
        "factor": cfg.factor,
        "params": ", ".join(f"{k}={params[k]}" for k in SCALED_PARAMS if k in params) or "none to scale",
        "dknn_accuracy": _dknn_accuracy(dknn, base["x_adv"][:n].to(ctx.device), y_np),
        "tolerance": cfg.tolerance,
    }
    if params:
        longer = call_plugin(acfg.name, create_attack, acfg.name, backend=acfg.backend, **params)
        for prop in sorted(getattr(longer, "properties", frozenset()) & KNOWLEDGE.keys()):
            KNOWLEDGE[prop](ctx, store, longer, source, seed, model)
        if acfg.warm_start:  # the same starts as the attack cell's, on the same first n examples
            give_warm_starts(ctx, store, longer, acfg, seed, source, eps, x)
        res = generate(model, longer, x, y, ThreatModel(eps=eps, norm=acfg.norm), batch_size=acfg.batch_size, seed=seed)
        row["dknn_accuracy_longer"] = _dknn_accuracy(dknn, res.x_adv.detach(), y_np)
        row["drop"] = row["dknn_accuracy"] - row["dknn_accuracy_longer"]
        # compared in examples (both accuracies are counts over the same n): a drop of exactly the tolerance is
        # within it, whatever the last bit of the float difference
        row["converged"] = bool(round(row["drop"] * n) <= cfg.tolerance * n + 1e-9)
    else:  # nothing to lengthen: no verdict
        row |= {"dknn_accuracy_longer": np.nan, "drop": np.nan, "converged": np.nan}
    row["seconds"] = time.perf_counter() - t0
    df = pd.DataFrame([row], columns=list(CONVERGENCE_COLUMNS))
    with ctx.cache.writer("convergence", cell.key, {"label": cell.label, "seconds": row["seconds"]}) as folder:
        df.to_csv(folder / "convergence.csv", index=False)
    store.add("convergence", df)
    return False
