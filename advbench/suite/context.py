"""What a cell handler reads (a frozen :class:`CellContext`) and where it puts what it makes (:class:`ArtefactStore`).

A handler gets both and nothing else: the suite, the data splits, the plan, the cache, the device,
the run options, and the in-process artefacts of the cells before it. The local executor shares one
store across the whole run; a Ray worker builds its own context from the suite and options and a
store per task, so every input a handler reads must also be readable back from the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from advbench.config import Suite
from advbench.data import Splits, load_dataset, make_splits
from advbench.errors import AdvbenchError
from advbench.models import Classifier
from advbench.suite.cache import Cache
from advbench.suite.paths import resolve_cache_dir
from advbench.suite.plan import Cell, Plan, build_plan, calibrate
from advbench.suite.rundir import RunDir

if TYPE_CHECKING:
    from advbench.evaluation.dknn import DkNN

#: The kinds of cell a plan holds (each has a handler in :mod:`advbench.suite.cells`).
CELL_KINDS = ("train", "clean-eval", "attack", "transfer", "dknn-index", "dknn-score", "convergence")

__all__ = ["CELL_KINDS", "TABLES", "ArtefactStore", "CellContext", "RunOptions", "resolve_device"]


@dataclass
class RunOptions:
    """How a suite is run (the ``advbench run`` flags)."""

    runs_dir: str = "runs"
    cache_dir: str | None = None
    data_dir: str | None = None
    device: str | None = None
    report: str | None = None
    resume: bool = False
    progress: bool = True
    executor: str = "local"  # "local" (in this process) or "ray"
    address: str | None = None  # Ray cluster address; None starts a local Ray instance
    fail_fast: bool = False  # stop at the first failed cell instead of recording it and going on
    time_limit: float | None = None  # seconds per attack cell (plugins can hang); None: no limit
    threads: int | None = None  # torch threads per cell; None: 1 (cells run in parallel instead)
    threads_auto: bool = False  # ``threads`` came from --threads auto (the free CPUs at the start of the run)
    workers: int | None = None  # local worker processes; None: the CPUs this process may use // threads

    def cell_threads(self, kind: str) -> int:
        """The torch thread count a cell of ``kind`` runs with (part of its cache key).

        An attack under ``--time-limit`` runs in a child process with ``CHILD_THREADS``; otherwise
        ``--threads``, else 1: by default the cells run in parallel, one thread each, in worker
        processes or on Ray, so every executor and worker count gives the same keys and bits.
        """
        if kind == "attack" and self.time_limit:
            from advbench.attacks.contract import CHILD_THREADS

            return CHILD_THREADS
        return int(self.threads) if self.threads else 1

    def local_workers(self, device: torch.device | None = None, *, worker_mb: float | None = None) -> int:
        """How many worker processes the local executor runs (1: every cell in this process).

        ``--workers``, else the CPUs this process may use divided by the threads per cell, and no more than
        the available memory holds at ``worker_mb`` each (a worker's peak measured by an earlier run); 1 on
        a GPU, which one process keeps busy.
        """
        if self.workers:
            return int(self.workers)
        if device is not None and device.type != "cpu":
            return 1
        from advbench.suite.threads import available_cpus, available_memory_mb

        n = max(1, available_cpus() // self.cell_threads("train"))
        free = available_memory_mb()
        if worker_mb and free is not None:
            n = min(n, max(1, int(0.9 * free // worker_mb)))
        return n


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` as a torch device; an error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError("device: cuda was asked for but torch sees no GPU; set device: cpu or auto")
    return torch.device(name)


def _load_as_guest(name: str, **kw: Any) -> Any:
    """:func:`load_dataset` with the dataset's loader as a guest (a plugin's code): ``sys.exit``, a change to
    torch's global state (restored) and a process left running (killed) become an error naming the dataset,
    before any cell runs."""
    from advbench.attacks.contract import GlobalState

    state = GlobalState.take(torch.nn.Module(), processes=True)
    try:
        raw = load_dataset(name, **kw)
    except SystemExit as exc:
        raise AdvbenchError(
            f"dataset {name!r}: its loader called sys.exit({exc.code!r}); a plugin may not end the run. "
            f"Fix the dataset plugin (raise an exception instead)"
        ) from exc
    finally:
        changed = state.restore()
    if changed:
        raise AdvbenchError(
            f"dataset {name!r}: its loader changed torch's global state or left processes it must leave alone: "
            f"{'; '.join(changed)}. It was restored and the run stops before any cell runs; fix the dataset plugin"
        )
    return raw


@dataclass(frozen=True)
class CellContext:
    """Everything a cell handler reads besides its inputs' artefacts. Build one with :meth:`create`."""

    suite: Suite
    options: RunOptions
    splits: Splits
    plan: Plan
    cache: Cache
    device: torch.device
    #: the fixed test subset every attack and evaluation uses (the same for every seed)
    transfer_indices: np.ndarray
    #: how many of ``transfer_indices`` the DkNN scores (0 without a DkNN evaluation)
    n_dknn: int
    cells: dict[tuple[str, tuple[tuple[str, Any], ...]], Cell] = field(repr=False)

    @classmethod
    def create(cls, suite: Suite, options: RunOptions | None = None) -> CellContext:
        """Load the data splits, plan the cells and open the cache for ``suite``."""
        opt = options or RunOptions()
        d = suite.dataset
        raw = _load_as_guest(d.name, data_dir=opt.data_dir or d.data_dir, download=d.download, **d.params)
        splits = make_splits(
            raw,
            train=d.splits.train,
            calibration=suite.calibration_size,
            test=d.splits.test,
            seed=d.seed,
            validation=d.splits.validation,
        )
        n_test = len(splits.test)
        n = min(suite.evaluations.transfer.n_examples or n_test, n_test)
        rng = np.random.default_rng(d.seed + 1)
        transfer = np.sort(rng.permutation(n_test)[:n]) if n < n_test else np.arange(n_test)
        dk = suite.evaluations.dknn
        n_dknn = min(dk.n_examples or len(transfer), len(transfer)) if dk is not None else 0
        ood = suite.evaluations.ood
        device = resolve_device(opt.device or suite.device)
        plan = build_plan(
            suite,
            splits,
            n_transfer=len(transfer),
            n_dknn=n_dknn,
            n_ood=ood.n_examples if ood and ood.dataset else 0,
            threads={kind: opt.cell_threads(kind) for kind in CELL_KINDS},
            examples=hashlib.sha256(np.ascontiguousarray(transfer, dtype=np.int64).tobytes()).hexdigest(),
            device=str(device),
        )
        # --cache-dir > $ADVBENCH_CACHE > the suite's cache_dir (checked: inside .cache/) > default
        cache = Cache(resolve_cache_dir(suite, opt.cache_dir))
        # the estimates (--plan, the ETA) from what this suite's finished cells measured where possible: the
        # seconds the runs' manifests recorded, and those kept with cache entries (which a run folder may lack)
        measured, by_label = RunDir.measured_seconds(opt.runs_dir, suite.name)
        for c in plan.cells:
            recorded = cache.recorded_seconds(c.kind, c.key)
            if recorded is not None:
                measured[c.key] = recorded
        plan = calibrate(plan, measured, earlier=by_label)
        return cls(
            suite=suite,
            options=opt,
            splits=splits,
            plan=plan,
            cache=cache,
            device=device,
            transfer_indices=transfer,
            n_dknn=n_dknn,
            cells={(c.kind, tuple(sorted(c.params.items()))): c for c in plan.cells},
        )

    @property
    def time_limit(self) -> float | None:
        """Seconds an attack cell may run (``--time-limit``); ``None``: no limit."""
        return self.options.time_limit

    def cell(self, kind: str, **params: Any) -> Cell:
        """The plan's cell of ``kind`` with exactly these ``params`` (e.g. ``cell("train", model=..., seed=0)``)."""
        try:
            return self.cells[(kind, tuple(sorted(params.items())))]
        except KeyError:
            raise KeyError(f"the plan of suite {self.suite.name!r} has no {kind} cell with {params}") from None

    def cells_of(self, kind: str) -> list[Cell]:
        """The plan's cells of ``kind``, in plan order."""
        return self.plan.by_kind(kind)


#: The result tables handlers append to, in the order :class:`~advbench.analysis.results.Results` names them.
TABLES = (
    "outcomes",
    "training",
    "clean",
    "dknn",
    "dknn_examples",
    "gradient_flags",
    "cross_outcomes",
    "attack_norms",
    "convergence",
)


@dataclass
class ArtefactStore:
    """The artefacts of finished cells in this process: models, adversarial sets, DkNN indices, result tables.

    Keys: ``models`` and ``indices`` by ``(model, seed)``; ``adversarial`` by ``(seed, source, attack, eps)``;
    ``tables`` by a name of :data:`TABLES`, each a list of frames in the order the cells added them.
    """

    models: dict[tuple[str, int], Classifier] = field(default_factory=dict)
    adversarial: dict[tuple[int, str, str, float], dict[str, torch.Tensor]] = field(default_factory=dict)
    indices: dict[tuple[str, int], DkNN] = field(default_factory=dict)
    tables: dict[str, list[pd.DataFrame]] = field(default_factory=lambda: {t: [] for t in TABLES})
    #: clean predictions on the attacked examples by ``(model, seed, examples digest)``, computed once per process
    #: and read by every transfer cell (``suite/cells/transfer.py``)
    clean_predictions: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)

    def add(self, table: str, frame: pd.DataFrame) -> None:
        """Append ``frame`` to the result table ``table`` (one of :data:`TABLES`)."""
        if table not in self.tables:
            raise KeyError(f"no result table {table!r}; expected one of {', '.join(TABLES)}")
        self.tables[table].append(frame)

    def table(self, table: str) -> pd.DataFrame:
        """The frames added to ``table``, concatenated (an empty frame when there are none)."""
        frames = self.tables[table]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def mark(self) -> tuple[dict[str, int], dict[str, set[Any]]]:
        """Where the store stands now, for :meth:`rollback` (table lengths, artefact keys)."""
        return (
            {t: len(f) for t, f in self.tables.items()},
            {"models": set(self.models), "adversarial": set(self.adversarial), "indices": set(self.indices)},
        )

    def rollback(self, mark: tuple[dict[str, int], dict[str, set[Any]]]) -> None:
        """Drop what was added since :meth:`mark` (the artefacts and tables of a cell whose results are refused)."""
        lengths, keys = mark
        for t, frames in self.tables.items():
            del frames[lengths.get(t, 0) :]
        for name, before in keys.items():
            d: dict[Any, Any] = getattr(self, name)
            for k in set(d) - before:
                del d[k]

    def with_models_only(self) -> ArtefactStore:
        """A store sharing this one's models and nothing else (what a Ray task starts from)."""
        return ArtefactStore(models=self.models)
