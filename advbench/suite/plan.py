"""Expand a suite into cells with content-addressed keys and dependencies.

train (model x seed) -> attack (source x attack x eps x seed) -> transfer (one per adversarial
set, evaluated on every model of its seed, plus one per other seed the suite's
``transfer.cross_seed`` names: the independent-training control) ; train -> dknn-index (model x
seed) -> dknn-score (model x seed, over clean, every adversarial set and the OOD sets) ; all -> report.
An attack on the DkNN (property ``adaptive-dknn``) also depends on the dknn-index cell it attacks.

A cell's key hashes everything that determines its output: its own config, the keys of the cells
it reads, the hashes of the data splits, and the versions of advbench and of the libraries it uses.
"""

from __future__ import annotations

import importlib.metadata
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from advbench import __version__
from advbench.attacks import ATTACKS
from advbench.codeversion import code_spec
from advbench.config import AttackConfig, ModelConfig, Suite
from advbench.data import Splits
from advbench.errors import AdvbenchError
from advbench.suite.cache import Cache, cache_key

__all__ = ["Cell", "Plan", "build_plan", "calibrate", "cross_seed_targets", "library_versions"]

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
    #: where :attr:`estimate_s` comes from (see :func:`calibrate`): ``"model"`` (the work model below),
    #: ``"measured"`` (this cell's own recorded seconds), ``"other seeds"`` (the median of the same cell
    #: measured on other seeds), ``"earlier code"`` (the same cell measured under another code version) or
    #: ``"kind ratio"`` (the model scaled by its kind's measured/model ratio)
    estimate_basis: str = "model"


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


def attack_properties(a: AttackConfig) -> frozenset[str]:
    """The registered attack's :attr:`~advbench.attacks.base.Attack.properties` (empty if unknown)."""
    try:
        cls = ATTACKS.get(a.name)
    except Exception:  # an unregistered name: validation reports it; the plan only estimates
        return frozenset()
    return frozenset(getattr(cls, "properties", frozenset()))


#: Forward+backward passes per example of torchattacks' AutoAttack ("standard", 10 classes) for the
#: estimate: APGD-CE's 100 steps on every example, then APGD-T and FAB-T (9 targets x 100 steps) and
#: Square (5000 queries, forward only, counted as 1/3) on the examples still robust, assumed to be
#: 10% of them (PGD-20 leaves about 2% at the transfer suite's eps 0.1). The upper bound, every
#: example surviving every stage, is 3,566 passes.
_AUTOATTACK_PASSES = 100 + (900 + 900 + 5000 // 3) // 10


def attack_passes(a: AttackConfig) -> int:
    """Forward+backward passes per example of an attack cell, for ``--plan``'s estimate."""
    if a.name.endswith("AutoAttack"):
        return _AUTOATTACK_PASSES
    if "adaptive-dknn" in attack_properties(a):
        cls = ATTACKS.get(a.name)
        return int(cls.passes_per_example(a.params))
    return _attack_steps(a)


def _adaptive_dknn_extra(a: AttackConfig, n: int, n_train: int) -> float:
    """Seconds an adaptive DkNN attack spends querying the real DkNN and the training features."""
    full = {"n_targets": 2, "restarts": 2} | dict(a.params)
    queries = n * (int(full["n_targets"]) * int(full["restarts"]) + 1)
    return queries * n_train / 2.0e7 + n_train / 5000.0


def build_plan(
    suite: Suite,
    splits: Splits,
    *,
    n_transfer: int,
    n_dknn: int,
    n_ood: int,
    threads: Mapping[str, int] | int | None = None,
) -> Plan:
    """The cells of ``suite``; ``threads``: the torch thread count each kind runs with (one for all, or per kind).

    Every spec includes ``code_spec(kind, threads=...)``: the version of the code behind its kind and
    the thread count, so a change to either gives new keys and cells computed differently never mix.
    """

    def code(kind: str) -> dict[str, Any]:
        n = threads.get(kind) if isinstance(threads, Mapping) else threads
        return code_spec(kind, threads=n)

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
                # the entanglement probe reads the validation split (none without one; never test images)
                "probe": "validation" if splits.validation is not None else None,
                "data": data,
                "versions": {**core, "safetensors": versions["safetensors"]},
                "code": code("train"),
            }
            key = cache_key("train", spec)
            train_keys[(m.name, seed)] = key
            if m.recipe is None:  # a model brought by the user: loaded, not trained
                work = 0.5
            else:
                work = (
                    n_train
                    * m.recipe.epochs
                    / _TRAIN_IMAGES_PER_S
                    * (1.6 if m.recipe.snnl.alpha or m.recipe.regularisers else 1.0)
                    * _model_cost(m)
                )
            cells.append(
                Cell("train", f"train {m.name} seed={seed}", key, [], spec, work, {"model": m.name, "seed": seed})
            )
    # DkNN index cells come before the attacks: an attack on the DkNN (``adaptive-dknn``) reads the
    # index it attacks (the white-box attacker's knowledge), and cells run in plan order.
    dk = suite.evaluations.dknn
    index_keys: dict[tuple[str, int], str] = {}
    index_specs: dict[tuple[str, int], dict[str, Any]] = {}
    if dk is not None and dk.enabled:
        for seed in suite.seeds:
            for m in suite.models:
                ispec = {
                    "model": train_keys[(m.name, seed)],
                    "dknn": dk.model_dump(exclude={"n_examples"}),
                    "data": data,
                    "versions": {**core, "faiss": versions["faiss-cpu"]},
                    "code": code("dknn-index"),
                }
                ikey = cache_key("dknn-index", ispec)
                index_keys[(m.name, seed)], index_specs[(m.name, seed)] = ikey, ispec
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
    attack_keys: dict[tuple[int, str, str, float], str] = {}
    for seed in suite.seeds:
        for m in suite.models:
            for a in suite.attacks:
                lib = {k: versions[k] for k in ("torchattacks", "foolbox")}
                adaptive = "adaptive-dknn" in attack_properties(a)
                if adaptive and (m.name, seed) not in index_keys:
                    raise AdvbenchError(
                        f"attack {a.key!r} ({a.name}) attacks the DkNN and needs its index (the white-box "
                        f"attacker's knowledge), but evaluations.dknn is not enabled; enable evaluations.dknn or "
                        f"remove the attack"
                    )
                for eps in a.eps:
                    spec = {
                        "source": train_keys[(m.name, seed)],
                        "attack": a.model_dump(exclude={"eps", "label"}),
                        "eps": eps,
                        "n": n_transfer,
                        "seed": seed,
                        "data": data,
                        "versions": {**core, **lib},
                        "code": code("attack"),
                    }
                    deps = [train_keys[(m.name, seed)]]
                    work = n_transfer * attack_passes(a) / _ATTACK_STEPS_IMAGES_PER_S * _model_cost(m)
                    if adaptive:  # the DkNN it attacks: its index is part of the attacker's knowledge
                        spec["dknn_index"] = index_keys[(m.name, seed)]
                        deps.append(index_keys[(m.name, seed)])
                        work += _adaptive_dknn_extra(a, n_transfer, n_train)
                    key = cache_key("attack", spec)
                    attack_keys[(seed, m.name, a.key, eps)] = key
                    cells.append(
                        Cell(
                            "attack",
                            f"attack {a.key} eps={eps:g} on {m.name} seed={seed}",
                            key,
                            deps,
                            spec,
                            work,
                            {"model": m.name, "seed": seed, "attack": a.key, "eps": eps},
                        )
                    )
    if suite.evaluations.transfer.enabled:
        for (seed, source, attack, eps), akey in attack_keys.items():
            targets = {m.name: train_keys[(m.name, seed)] for m in suite.models}
            spec = {"adv": akey, "targets": targets, "versions": core, "code": code("transfer")}
            cells.append(
                Cell(
                    "transfer",
                    f"transfer {attack} eps={eps:g} from {source} seed={seed}",
                    cache_key("transfer", spec),
                    [akey, *targets.values()],
                    spec,
                    0.05 * len(targets),
                    {"seed": seed, "source": source, "attack": attack, "eps": eps, "target_seed": seed},
                )
            )
        # the independent-training control: the same adversarial set on the models of another seed
        # (other initial weights and batch order); ring keeps the cost linear in the number of seeds
        for (seed, source, attack, eps), akey in attack_keys.items():
            for target_seed in cross_seed_targets(suite.seeds, seed, suite.evaluations.transfer.cross_seed):
                targets = {m.name: train_keys[(m.name, target_seed)] for m in suite.models}
                source_key = train_keys[(source, seed)]
                spec = {"adv": akey, "source": source_key, "targets": targets, "target_seed": target_seed}
                spec["versions"] = core
                cells.append(
                    Cell(
                        "transfer",
                        f"transfer {attack} eps={eps:g} from {source} seed={seed} to seed={target_seed}",
                        cache_key("transfer", spec),
                        [akey, source_key, *targets.values()],
                        spec,
                        0.05 * (len(targets) + 1),
                        {"seed": seed, "source": source, "attack": attack, "eps": eps, "target_seed": target_seed},
                    )
                )
    if dk is not None and dk.enabled:
        for seed in suite.seeds:
            for m in suite.models:
                ikey, ispec = index_keys[(m.name, seed)], index_specs[(m.name, seed)]
                adv = sorted(k for (s, *_), k in attack_keys.items() if s == seed)
                ood = suite.evaluations.ood.model_dump() if suite.evaluations.ood else None
                sspec = {
                    "index": ikey,
                    "adv": adv,
                    "ood": ood,
                    "n": n_dknn,
                    "n_ood": n_ood,
                    "versions": ispec["versions"],
                    "code": code("dknn-score"),
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


_SEED = re.compile(r"\bseed=-?\d+")


def cell_family(cell: Cell) -> tuple[str, str]:
    """The cells that do the same work on another replicate: kind and label with every seed blanked."""
    return cell.kind, _SEED.sub("seed=*", cell.label)


def calibrate(plan: Plan, measured: Mapping[str, float], *, earlier: Mapping[str, float] | None = None) -> Plan:
    """``plan`` with its estimates replaced by measurements where there are some.

    ``measured`` maps cell keys to the seconds their computation took (run manifests, cache entries);
    ``earlier`` maps cell labels to the same, so that a cell is found again under another code version. A cell
    with a measurement takes it; one without takes the median of its :func:`cell_family` measured on other
    seeds; failing that, what the same cell took under earlier code; failing that, the work model's estimate
    scaled by the median measured/model ratio of its kind; failing that, the work model alone. The work
    model's constants were fitted once on one machine and drift from what a given machine and a given attack
    really cost (6-8x low for the adaptive DkNN attack, measured); a suite's own finished cells are the better
    guide to its unfinished ones.
    """
    family: dict[tuple[str, str], list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for c in plan.cells:
        if c.key in measured:
            family[cell_family(c)].append(measured[c.key])
            if c.estimate_s > 0:
                ratios[c.kind].append(measured[c.key] / c.estimate_s)
    cells = []
    for c in plan.cells:
        if c.key in measured:
            c = replace(c, estimate_s=measured[c.key], estimate_basis="measured")
        elif family.get(cell_family(c)):
            c = replace(c, estimate_s=statistics.median(family[cell_family(c)]), estimate_basis="other seeds")
        elif earlier and c.label in earlier:
            c = replace(c, estimate_s=earlier[c.label], estimate_basis="earlier code")
        elif ratios.get(c.kind):
            c = replace(c, estimate_s=c.estimate_s * statistics.median(ratios[c.kind]), estimate_basis="kind ratio")
        cells.append(c)
    return Plan(plan.suite, cells)


def cross_seed_targets(seeds: list[int], seed: int, mode: str) -> list[int]:
    """The target seeds of the cross-seed transfer cells of source seed ``seed``.

    ``"ring"``: the next seed in ``seeds`` (cyclic), so n seeds give n cells per adversarial set;
    ``"all"``: every other seed; ``"none"``: no cross-seed cell.
    """
    if mode == "none" or len(seeds) < 2:
        return []
    if mode == "ring":
        return [seeds[(seeds.index(seed) + 1) % len(seeds)]]
    if mode == "all":
        return [s for s in seeds if s != seed]
    raise ValueError(f"cross_seed {mode!r}: expected 'ring', 'all' or 'none'")


def _model_cost(m: ModelConfig) -> float:
    """Per-image cost of ``m``'s architecture relative to the ``cnn`` (registry metadata ``cost``; 1 if none)."""
    from advbench.models import MODELS

    if m.architecture is None:  # a model built by the user's own code: no declared cost
        return 1.0
    try:
        cost = MODELS.metadata(m.architecture).get("cost", 1.0)
        return float(cost(**m.params) if callable(cost) else cost)
    except Exception:  # an unknown architecture or bad params: validation reports them
        return 1.0


def _model_spec(m: ModelConfig) -> dict[str, Any]:
    # the label is not part of the key: two labels with the same config share one trained model
    if m.recipe is None:  # brought by the user: its weights' digest and its builder's source identify it
        from advbench.models.external import entry_point_source_hash

        return {
            "architecture": m.architecture,
            "builder": m.builder,
            "builder_source": entry_point_source_hash(m.builder) if m.builder else "",
            "params": m.params,
            "weights_sha256": m.weights.sha256.lower() if m.weights else None,
        }
    return {"architecture": m.architecture, "params": m.params, "recipe": m.recipe.model_dump()}


def describe_plan(plan: Plan, cache: Cache) -> list[dict[str, Any]]:
    """One row per cell: kind, label, cached or not, estimated seconds (for ``advbench run --plan``)."""
    return [
        {
            "kind": c.kind,
            "cell": c.label,
            "cached": cache.exists(c.kind, c.key),
            "estimate_s": round(c.estimate_s, 1),
            "basis": c.estimate_basis,
            "key": c.key[:12],
        }
        for c in plan.cells
    ]
