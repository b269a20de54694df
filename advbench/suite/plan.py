"""Expand a suite into cells with content-addressed keys and dependencies.

train (model x seed) -> attack (source x attack x eps x seed) -> transfer (one per adversarial
set, evaluated on every model) ; train -> dknn-index (model x seed) -> dknn-score (model x seed,
over clean, every adversarial set and the OOD set) ; all -> report.

A cell's key hashes everything that determines its output: its own config, the keys of the cells
it reads, the hashes of the data splits, and the versions of advbench and of the libraries it uses.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from advbench import __version__
from advbench.config import AttackConfig, ModelConfig, Suite
from advbench.data import Splits
from advbench.suite.cache import Cache, cache_key

__all__ = ["Cell", "Plan", "build_plan", "library_versions"]

#: Seconds per unit of work on the reference 2-core machine (environment.md), for estimates only.
_TRAIN_IMAGES_PER_S = 1600.0
_ATTACK_STEPS_IMAGES_PER_S = 2500.0


def library_versions() -> dict[str, str]:
    out = {"advbench": __version__}
    for lib in ("torch", "numpy", "torchattacks", "foolbox", "faiss-cpu", "scikit-learn", "safetensors"):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


@dataclass
class Cell:
    kind: str
    label: str
    key: str
    deps: list[str]
    spec: dict[str, Any]
    estimate_s: float
    params: dict[str, Any] = field(default_factory=dict)  # runtime handles (names), not part of the key


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]

    def by_kind(self, kind: str) -> list[Cell]:
        return [c for c in self.cells if c.kind == kind]

    def find(self, kind: str, **params: Any) -> Cell:
        for c in self.cells:
            if c.kind == kind and all(c.params.get(k) == v for k, v in params.items()):
                return c
        raise KeyError(f"no {kind} cell with {params}")


def _attack_steps(a: AttackConfig) -> int:
    return int(a.params.get("steps", 1 if a.name == "fgsm" else 10))


def build_plan(suite: Suite, splits: Splits, *, n_transfer: int, n_dknn: int, n_ood: int) -> Plan:
    versions = library_versions()
    core = {k: versions[k] for k in ("advbench", "torch", "numpy")}
    data = {"dataset": suite.dataset.name, "hashes": splits.hashes}
    cells: list[Cell] = []
    train_keys: dict[tuple[str, int], str] = {}
    n_train = len(splits.train)
    for seed in suite.seeds:
        for m in suite.models:
            spec = {
                "model": _model_spec(m),
                "seed": seed,
                "data": data,
                "versions": {**core, "safetensors": versions["safetensors"]},
            }
            key = cache_key("train", spec)
            train_keys[(m.name, seed)] = key
            work = n_train * m.recipe.epochs / _TRAIN_IMAGES_PER_S * (1.6 if m.recipe.snnl.alpha else 1.0)
            cells.append(
                Cell("train", f"train {m.name} seed={seed}", key, [], spec, work, {"model": m.name, "seed": seed})
            )
    attack_keys: dict[tuple[int, str, str, float], str] = {}
    for seed in suite.seeds:
        for m in suite.models:
            for a in suite.attacks:
                lib = {k: versions[k] for k in ("torchattacks", "foolbox")}
                for eps in a.eps:
                    spec = {
                        "source": train_keys[(m.name, seed)],
                        "attack": a.model_dump(exclude={"eps", "label"}),
                        "eps": eps,
                        "n": n_transfer,
                        "seed": seed,
                        "data": data,
                        "versions": {**core, **lib},
                    }
                    key = cache_key("attack", spec)
                    attack_keys[(seed, m.name, a.key, eps)] = key
                    work = n_transfer * _attack_steps(a) / _ATTACK_STEPS_IMAGES_PER_S
                    cells.append(
                        Cell(
                            "attack",
                            f"attack {a.key} eps={eps:g} on {m.name} seed={seed}",
                            key,
                            [train_keys[(m.name, seed)]],
                            spec,
                            work,
                            {"model": m.name, "seed": seed, "attack": a.key, "eps": eps},
                        )
                    )
    if suite.evaluations.transfer.enabled:
        for (seed, source, attack, eps), akey in attack_keys.items():
            targets = {m.name: train_keys[(m.name, seed)] for m in suite.models}
            spec = {"adv": akey, "targets": targets, "versions": core}
            cells.append(
                Cell(
                    "transfer",
                    f"transfer {attack} eps={eps:g} from {source} seed={seed}",
                    cache_key("transfer", spec),
                    [akey, *targets.values()],
                    spec,
                    0.05 * len(targets),
                    {"seed": seed, "source": source, "attack": attack, "eps": eps},
                )
            )
    dk = suite.evaluations.dknn
    if dk is not None and dk.enabled:
        for seed in suite.seeds:
            for m in suite.models:
                ispec = {
                    "model": train_keys[(m.name, seed)],
                    "dknn": dk.model_dump(exclude={"n_examples"}),
                    "data": data,
                    "versions": {**core, "faiss": versions["faiss-cpu"]},
                }
                ikey = cache_key("dknn-index", ispec)
                cells.append(
                    Cell(
                        "dknn-index",
                        f"dknn index {m.name} seed={seed}",
                        ikey,
                        [train_keys[(m.name, seed)]],
                        ispec,
                        n_train / 5000.0,
                        {"model": m.name, "seed": seed},
                    )
                )
                adv = sorted(k for (s, *_), k in attack_keys.items() if s == seed)
                ood = suite.evaluations.ood.model_dump() if suite.evaluations.ood else None
                sspec = {
                    "index": ikey,
                    "adv": adv,
                    "ood": ood,
                    "n": n_dknn,
                    "n_ood": n_ood,
                    "versions": ispec["versions"],
                }
                ocfg = suite.evaluations.ood
                n_sets = 1 + len(adv) + (int(ocfg.dataset is not None) + len(ocfg.shifts) if ocfg else 0)
                cells.append(
                    Cell(
                        "dknn-score",
                        f"dknn score {m.name} seed={seed} ({n_sets} input sets)",
                        cache_key("dknn-score", sspec),
                        [ikey, *adv],
                        sspec,
                        n_sets * n_dknn * n_train / 2.0e7,
                        {"model": m.name, "seed": seed},
                    )
                )
    return Plan(suite, cells)


def _model_spec(m: ModelConfig) -> dict[str, Any]:
    # the label is not part of the key: two labels with the same config share one trained model
    return {"architecture": m.architecture, "params": m.params, "recipe": m.recipe.model_dump()}


def describe_plan(plan: Plan, cache: Cache) -> list[dict[str, Any]]:
    """One row per cell: kind, label, cached or not, estimated seconds (for ``advbench run --plan``)."""
    return [
        {
            "kind": c.kind,
            "cell": c.label,
            "cached": cache.exists(c.kind, c.key),
            "estimate_s": round(c.estimate_s, 1),
            "key": c.key[:12],
        }
        for c in plan.cells
    ]
