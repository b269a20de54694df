"""Cell kind ``dknn-score``: one model's DkNN, softmax and Mahalanobis scores on clean, adversarial and OOD sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from advbench.data import load_dataset
from advbench.errors import AdvbenchError
from advbench.suite.cells import handler
from advbench.suite.cells.dknn_index import dknn_index
from advbench.suite.cells.store import adversarial_set, trained_model

if TYPE_CHECKING:
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["run_dknn_score"]


def _ood_set(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    ood = ctx.suite.evaluations.ood
    if ood is None or ood.dataset is None:
        return None
    raw = load_dataset(ood.dataset, **ood.params)
    x = np.concatenate([raw.x_train] + ([raw.x_test] if raw.x_test is not None else []))
    y = np.concatenate([raw.y_train] + ([raw.y_test] if raw.y_test is not None else []))
    shape = ctx.splits.input_shape
    if tuple(x.shape[1:]) != tuple(shape):
        raise AdvbenchError(
            f"evaluations.ood: the dataset {ood.dataset!r} has inputs of shape {tuple(x.shape[1:])}, but the models "
            f"take {tuple(shape)}; pick a dataset of that shape or pass params that resize it (e.g. digits: size: 28)"
        )
    rng = np.random.default_rng(ctx.suite.dataset.seed + 2)
    idx = np.sort(rng.permutation(len(y))[: ood.n_examples])
    return torch.from_numpy(x[idx]).float() / float(raw.max_value), torch.from_numpy(y[idx]).long()


@handler("dknn-score")
def run_dknn_score(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """Score the clean, adversarial and OOD sets of one model with its DkNN and its softmax.

    Per example: :func:`~advbench.evaluation.dknn.example_records` (p-values, neighbour counts per
    layer, the softmax beside the DkNN) with the set's identity (``input_set``, ``kind``, ``source``/
    ``attack``/``eps`` of adversarial sets, ``distance`` and ``shift_sha256`` of shift sets). Per set:
    :func:`~advbench.evaluation.calibration.dknn_set_records` (conformal validity and efficiency,
    detection of *successful* attacks and of OOD inputs against the clean set, the MSP's ECE).
    Beside credibility and the MSP, every set is scored by the Mahalanobis detector (column
    ``mahalanobis``), fitted once per model on the training split's last-hidden-layer features.
    """
    name, seed = cell.params["model"], cell.params["seed"]
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.add("dknn", pd.read_csv(entry.file("records.csv")))
            store.add("dknn_examples", pd.read_csv(entry.file("examples.csv.gz")))
            return True
        except (OSError, ValueError) as exc:
            ctx.cache.discard(cell.kind, cell.key, f"unreadable DkNN scores: {exc}")
    # lazy: scikit-learn's metrics take ~2 s to import, and a cache hit needs none
    from advbench.data.shift import shift_sets
    from advbench.evaluation.calibration import dknn_set_records
    from advbench.evaluation.dknn import example_records, softmax_probabilities
    from advbench.evaluation.mahalanobis import fit_mahalanobis, mahalanobis_scores

    model = trained_model(ctx, store, name, seed)
    dknn = dknn_index(ctx, store, name, seed, model)
    train = ctx.splits.train
    maha = fit_mahalanobis(model, train.x, train.y, device=ctx.device)
    n = ctx.n_dknn
    test = ctx.splits.test
    ids = ctx.transfer_indices[:n]
    idx = torch.from_numpy(ids)
    x_clean, y = test.x[idx], test.y[idx]
    n_cal = len(ctx.splits.calibration)

    def examples(x: torch.Tensor, labels: np.ndarray | None, example_ids: np.ndarray, **kw: Any) -> pd.DataFrame:
        x = x.to(ctx.device)
        return example_records(
            dknn.predict(x),
            labels=labels,
            example_ids=example_ids,
            softmax=softmax_probabilities(model, x),
            mahalanobis=mahalanobis_scores(model, maha, x, device=ctx.device),
            **kw,
        )

    rows: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []

    def add(frame: pd.DataFrame, input_set: str, kind: str, extra: dict[str, Any], clean: pd.DataFrame | None) -> None:
        rows.extend(
            dknn_set_records(
                frame,
                model=name,
                seed=seed,
                input_set=input_set,
                kind=kind,
                clean_examples=clean,
                n_calibration=n_cal,
                extra=extra,
            )
        )
        ident = {"model": name, "seed": seed, "input_set": input_set, "kind": kind, **extra}
        frames.append(frame.assign(**ident)[[*ident, *frame.columns]])

    y_np = y.numpy()
    clean = examples(x_clean, y_np, ids)
    add(clean, "clean", "clean", {}, None)
    clean_correct = clean["softmax_correct"].to_numpy(dtype=bool)
    # The adversarial sets this cell scores are the ones its spec lists (all of the seed's, less
    # any whose attack failed), in a fixed order.
    wanted = set(cell.spec["adv"])
    attacks = sorted(
        (c.params["model"], c.params["attack"], c.params["eps"])
        for c in ctx.cells_of("attack")
        if c.params["seed"] == seed and c.key in wanted
    )
    for source, akey, eps in attacks:
        adv = adversarial_set(ctx, store, seed, source, akey, eps)
        frame = examples(adv["x_adv"][:n], y_np, ids, clean_correct=clean_correct)
        add(
            frame, f"{akey}@{eps:g} from {source}", "adversarial", {"source": source, "attack": akey, "eps": eps}, clean
        )
    ood_cfg = ctx.suite.evaluations.ood
    ood = _ood_set(ctx)
    if ood is not None and ood_cfg is not None:
        # another dataset: far from the training distribution; its ids are positions in its sample, and
        # its labels (another dataset's classes) are not the models' classes, so it is scored unlabelled
        add(examples(ood[0], None, np.arange(len(ood[0]))), "ood", "ood", {"distance": "far"}, clean)
    if ood_cfg is not None and ood_cfg.shifts:
        for sh in shift_sets(x_clean, y_np, ood_cfg.shifts, seed=ctx.suite.dataset.seed, example_ids=ids):
            extra = {"distance": sh.distance, "shift": sh.name, "shift_sha256": sh.sha256}
            add(examples(sh.tensor(), sh.y, ids), f"shift {sh.name}", "ood", extra, clean)
    records, table = pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
    with ctx.cache.writer("dknn-score", cell.key, {"label": cell.label}) as folder:
        records.to_csv(folder / "records.csv", index=False)
        table.to_csv(folder / "examples.csv.gz", index=False)
    store.add("dknn", records)
    store.add("dknn_examples", table)
    return False
