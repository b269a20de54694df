"""Cell kind ``attack``: one attack at one eps on one source model's attacked test examples."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from advbench.attacks.base import ThreatModel, create_attack, generate
from advbench.attacks.contract import call_plugin, run_with_time_limit
from advbench.evaluation.min_norm import attack_norm_record
from advbench.suite.cells import KNOWLEDGE, handler
from advbench.suite.cells.store import adversarial_set, trained_model

if TYPE_CHECKING:
    from advbench.config import AttackConfig
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["give_warm_starts", "run_attack"]


@handler("attack")
def run_attack(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.adversarial[(seed, source, akey, eps)] = load_file(str(entry.file("adv.safetensors")))
            _add_attack_norms(ctx, cell, store)
            return True
        except Exception as exc:  # a safetensors parse error of a file whose checksum matched: treat as corrupt
            ctx.cache.discard(cell.kind, cell.key, f"unreadable adversarial set: {exc}")
    acfg = next(a for a in ctx.suite.attacks if a.key == akey)
    model = trained_model(ctx, store, source, seed)
    test = ctx.splits.test
    idx = torch.from_numpy(ctx.transfer_indices)
    x, y = test.x[idx].to(ctx.device), test.y[idx].to(ctx.device)
    # the plugin's constructor is its code too: an exit there is this cell's failure
    attack = call_plugin(acfg.name, create_attack, acfg.name, backend=acfg.backend, **acfg.params)
    for prop in sorted(getattr(attack, "properties", frozenset()) & KNOWLEDGE.keys()):
        KNOWLEDGE[prop](ctx, store, attack, source, seed, model)
    if acfg.warm_start:
        give_warm_starts(ctx, store, attack, acfg, seed, source, eps, x)
    t0 = time.perf_counter()

    def attack_all() -> dict[str, torch.Tensor]:
        res = generate(
            model,
            attack,
            x,
            y,
            ThreatModel(eps=eps, norm=acfg.norm),
            batch_size=acfg.batch_size,
            seed=seed,
            progress=ctx.options.progress,
        )
        out = {
            "x_adv": res.x_adv.detach().cpu().contiguous(),
            "success": res.success.detach().cpu().to(torch.uint8).contiguous(),
            "linf": res.linf.detach().cpu().contiguous(),
            "indices": idx.contiguous(),
        }
        if res.l2 is not None:
            out["l2"] = res.l2.detach().cpu().contiguous()
        if res.raw_norm is not None:  # a minimum-norm attack: its own perturbation sizes, before the eps filter
            out["raw_norm"] = res.raw_norm.detach().cpu().contiguous()
        return out

    if ctx.time_limit:
        # in a child process that is killed when the time is up: a plugin cannot swallow the limit
        # (it runs with CHILD_THREADS threads, which the cell's key records)
        tensors = run_with_time_limit(attack_all, timeout_s=ctx.time_limit, name=cell.label)
    else:
        tensors = attack_all()
    meta = {"attack": repr(attack), "eps": str(eps), "norm": acfg.norm}
    with ctx.cache.writer("attack", cell.key, {"label": cell.label, "seconds": time.perf_counter() - t0}) as folder:
        save_file(tensors, str(folder / "adv.safetensors"), metadata=meta)
    store.adversarial[(seed, source, akey, eps)] = tensors
    _add_attack_norms(ctx, cell, store)
    return False


def give_warm_starts(
    ctx: CellContext,
    store: ArtefactStore,
    attack: Any,
    acfg: AttackConfig,
    seed: int,
    source: str,
    eps: float,
    x: torch.Tensor,
) -> None:
    """Hand an attack with ``warm_start`` the other attacks' adversarial examples of ``x`` (the first ``len(x)``
    attacked examples) at the same model, seed, eps and norm (:meth:`Suite.warm_start_sources`)."""
    starts = []
    for other in ctx.suite.warm_start_sources(acfg, eps):
        adv = adversarial_set(ctx, store, seed, source, other, eps)
        if not torch.equal(adv["indices"][: len(x)].long(), torch.from_numpy(ctx.transfer_indices[: len(x)]).long()):
            raise RuntimeError(f"the warm start {other} eps={eps:g} on {source} seed={seed} attacked other examples")
        starts.append(adv["x_adv"][: len(x)].to(x.device))
    if starts:
        attack.set_warm_starts(x, starts)


def _add_attack_norms(ctx: CellContext, cell: Cell, store: ArtefactStore) -> None:
    """Table ``attack_norms``: a minimum-norm attack's perturbation sizes (its set holds ``raw_norm``)."""
    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    tensors = store.adversarial[(seed, source, akey, eps)]
    if "raw_norm" not in tensors:
        return
    norm = next(a.norm for a in ctx.suite.attacks if a.key == akey)
    raw = tensors["raw_norm"].double().numpy()
    store.add(
        "attack_norms", attack_norm_record(seed=seed, source=source, attack=akey, eps=eps, norm=norm, raw_norm=raw)
    )
