"""Executors: where cells run. One :class:`Executor` protocol, the :class:`LocalExecutor` here and the
Ray one in :mod:`advbench.suite.ray_executor`; both return one :class:`CellReport` per planned cell.

Running one cell is shared by both: dispatch to its kind's handler, time limits, failures and what they block.

A cell that raises is *failed*; the cells that need its output are *skipped*, except the DkNN
scoring of a seed, which goes on with the adversarial sets that exist (under its own cache key, so
a later complete run never mistakes it for the full one). A failure is recorded with the cell's
name and the error, and the run goes on, unless ``--fail-fast``. Errors that every later cell would
hit too (the disk is full) always stop the run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from torch import nn
from tqdm.auto import tqdm

from advbench.attacks.contract import GlobalState
from advbench.errors import AdvbenchError
from advbench.io import is_disk_full
from advbench.suite.cache import cache_key
from advbench.suite.context import ArtefactStore, CellContext
from advbench.suite.handlers import HANDLERS
from advbench.suite.plan import Cell, Plan

__all__ = [
    "CellReport",
    "CellTimeoutError",
    "Executor",
    "LocalExecutor",
    "execute_cell",
    "failure_message",
    "is_fatal",
    "log_problem",
    "reports_in_plan_order",
    "time_limit",
    "without_failed",
]

log = logging.getLogger(__name__)

#: Cell kinds whose whole body runs under a SIGALRM time limit. None: attack cells, which run user
#: code, apply ``--time-limit`` themselves by running the attack in a child process that is killed
#: when the time is up (:func:`advbench.attacks.contract.run_with_time_limit`), which a plugin that
#: catches every exception cannot swallow, unlike a signal.
TIME_LIMITED: tuple[str, ...] = ()


class CellTimeoutError(AdvbenchError):
    """A cell ran past the time limit given with ``--time-limit``."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`CellTimeoutError` in the block after ``seconds`` of wall time.

    Uses ``SIGALRM`` (no library offers a portable in-process timeout), so it interrupts Python code
    and blocking calls such as ``time.sleep`` but not a single native call that never returns; it
    is a no-op off the main thread, where signals cannot be delivered.
    """
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise CellTimeoutError(
            f"{what} ran past the time limit of {seconds:g} s and was stopped; "
            f"raise it with --time-limit SECONDS if the cell is just slow"
        )

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute_cell(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """Compute ``cell`` (or read it from the cache) into ``store`` with its kind's handler; ``True`` when cached."""
    try:
        handler = HANDLERS[cell.kind]
    except KeyError:
        raise AdvbenchError(
            f"no handler for cell kind {cell.kind!r} ({cell.label}); registered: {', '.join(sorted(HANDLERS))}. "
            f"Register one with @advbench.suite.handlers.handler({cell.kind!r})"
        ) from None
    limit = ctx.time_limit if cell.kind in TIME_LIMITED else None
    with time_limit(limit, cell.label):
        return bool(handler(ctx, cell, store))


@dataclass
class CellReport:
    """What became of one planned cell.

    ``status`` is ``ok``, ``failed`` or ``skipped`` (a cell it needs did not complete); ``label`` and
    ``kind`` are those of the cell that ran (a DkNN scoring cell may run without failed sets);
    ``node`` is the machine that ran it and ``attempts`` how many times (Ray retries dead workers).
    """

    key: str
    label: str
    kind: str
    status: str
    cached: bool = False
    seconds: float = 0.0
    error: str = ""
    node: str | None = None
    attempts: int = 1
    run_key: str = ""  # the cache key of the cell that ran (differs from ``key`` for a reduced DkNN cell)


class Executor(Protocol):
    """Runs a plan's cells; calls ``on_report`` as each finishes and returns every report in plan order.

    Handlers' result tables end up in ``store`` in plan order, whatever the executor.
    """

    #: what the executor ran on, for the run manifest (empty for the local executor)
    info: dict[str, Any]

    def execute(
        self, plan: Plan, ctx: CellContext, store: ArtefactStore, on_report: Callable[[CellReport], None]
    ) -> list[CellReport]: ...


def run_one(
    ctx: CellContext, planned: Cell, store: ArtefactStore, failed: Mapping[str, str], labels: Mapping[str, str]
) -> CellReport:
    """Run ``planned`` unless a cell it needs failed; its report. Raises only for ``--fail-fast`` or fatal errors."""
    cell, reason = without_failed(planned, failed, labels)
    if cell is None:
        return CellReport(planned.key, planned.label, planned.kind, "skipped", error=reason)
    start = time.perf_counter()
    # every plugin kind is a guest (attacks also check each call, with the model): torch's global switches
    # and module hooks are snapshotted around the cell and restored, a process the cell leaves running is
    # killed, and either fails this cell, naming the plugins it ran, so a later, innocent cell is never blamed
    state, mark = GlobalState.take(_NO_MODEL, processes=True), store.mark()
    try:
        try:
            cached = execute_cell(ctx, cell, store)
        except SystemExit as exc:  # code inside the cell (a plugin) may not end the run
            raise AdvbenchError(
                f"code run by {cell.label} ({guests(cell)}) called sys.exit({exc.code!r}); nothing inside a cell "
                f"may end the run, so this cell fails and the rest goes on. A plugin must raise an exception instead"
            ) from exc
        finally:
            changed = state.restore()
        if changed:
            store.rollback(mark)
            ctx.cache.discard(cell.kind, cell.key, "the code that made it changed global state or left processes")
            raise GuestStateError(
                f"code run by {cell.label} ({guests(cell)}) changed torch's global state or left processes it must "
                f"leave alone: {'; '.join(changed)}. It was restored and this cell's results are refused; a plugin "
                f"must undo any change it makes (use context managers such as torch.no_grad()) and wait for the "
                f"processes it starts"
            )
    except Exception as exc:
        if changed and not isinstance(exc, GuestStateError) and not is_fatal(exc):
            # the state change is the likelier cause of the failure: say both
            store.rollback(mark)
            guest = GuestStateError(
                f"code run by {cell.label} ({guests(cell)}) changed torch's global state or left processes "
                f"({'; '.join(changed)}; restored), and the cell then failed: {failure_message(exc)}"
            )
            guest.__cause__ = exc
            exc = guest
        if ctx.options.fail_fast or is_fatal(exc):
            raise exc
        return CellReport(planned.key, cell.label, cell.kind, "failed", error=failure_message(exc), run_key=cell.key)
    return CellReport(
        planned.key, cell.label, cell.kind, "ok", cached=cached, seconds=time.perf_counter() - start, run_key=cell.key
    )


#: what :class:`GlobalState` snapshots when there is no model: torch's switches and the global module hooks
_NO_MODEL = nn.Module()


class GuestStateError(AdvbenchError):
    """Code run by a cell (a plugin) left torch's global state changed; the cell's results are refused."""


def guests(cell: Cell) -> str:
    """The plugin components a cell runs (role and identity), or ``advbench's own code`` when it runs none."""
    out = []
    for role, ident in cell.spec.get("code", {}).get("components", {}).items():
        for i in ident if isinstance(ident, list) else [ident]:
            if not str(i).startswith("advbench."):
                out.append(f"{role} {i}")
    return ", ".join(out) or "advbench's own code"


class LocalExecutor:
    """Every cell in this process, in plan order (each reads its inputs from the cells before it).

    The parallel default is :class:`~advbench.suite.pool_executor.PoolExecutor`; this one runs with
    ``--workers 1``, on a GPU, and for suites that use code registered by the calling script.
    """

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def execute(
        self, plan: Plan, ctx: CellContext, store: ArtefactStore, on_report: Callable[[CellReport], None]
    ) -> list[CellReport]:
        failed: dict[str, str] = {}
        labels = {c.key: c.label for c in plan.cells}
        reports: list[CellReport] = []
        bar = tqdm(plan.cells, desc=f"suite {ctx.suite.name}", unit="cell", disable=not ctx.options.progress)
        for planned in bar:
            bar.set_postfix_str(planned.label[:60])
            report = run_one(ctx, planned, store, failed, labels)
            log_problem(report, failed, planned.key)
            reports.append(report)
            on_report(report)
        bar.close()
        return reports


def log_problem(report: CellReport, failed: dict[str, str], key: str) -> None:
    """Record a cell that did not complete in ``failed`` (its planned ``key`` -> error) and log it."""
    if report.status == "ok":
        return
    failed[key] = report.error
    if report.status == "failed":
        log.error("cell %s failed: %s (the run goes on; --fail-fast stops it)", report.label, report.error)
    else:
        log.warning("skipped %s: %s", report.label, report.error)


def reports_in_plan_order(
    plan: Plan, out: Mapping[str, tuple[CellReport, Mapping[str, list[Any]]]], store: ArtefactStore
) -> list[CellReport]:
    """The reports of a parallel executor's cells (``out``: key -> (report, its result tables)) in plan order,
    their tables added to ``store`` in that order, as the in-process executor adds them."""
    reports = []
    for cell in plan.cells:
        report, tables = out[cell.key]
        for table, frames in tables.items():
            for frame in frames:
                store.add(table, frame)
        reports.append(report)
    return reports


def is_fatal(exc: BaseException) -> bool:
    """Errors that no later cell could escape, so the run stops even without ``--fail-fast``: a full disk."""
    return is_disk_full(exc)


def failure_message(exc: BaseException) -> str:
    """One line for the report: the error's type and message, without pipes or newlines."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text.replace("|", "/")[:400]


def without_failed(cell: Cell, failed: Mapping[str, str], labels: Mapping[str, str]) -> tuple[Cell | None, str]:
    """``cell`` adjusted for failed dependencies: ``(cell, "")`` to run it, ``(None, reason)`` to skip it.

    ``failed`` maps the keys of failed (or skipped) cells to their errors; ``labels`` maps keys to labels.
    """
    blocked = [d for d in cell.deps if d in failed]
    if not blocked:
        return cell, ""
    if cell.kind == "dknn-score" and cell.spec["index"] not in failed:
        spec = {**cell.spec, "adv": [k for k in cell.spec["adv"] if k not in failed]}
        return (
            replace(
                cell,
                label=f"{cell.label} without {len(blocked)} failed set{'s' if len(blocked) != 1 else ''}",
                key=cache_key("dknn-score", spec),
                deps=[spec["index"], *spec["adv"]],
                spec=spec,
            ),
            "",
        )
    if cell.kind == "transfer" and cell.spec["adv"] not in failed and cell.spec.get("source") not in failed:
        # the adversarial set on the targets that exist: one failed model does not take its seed's transfer with it
        targets = {name: key for name, key in cell.spec["targets"].items() if key not in failed}
        if targets:
            spec = {**cell.spec, "targets": targets}
            n = len(cell.spec["targets"]) - len(targets)
            return (
                replace(
                    cell,
                    label=f"{cell.label} without {n} failed target{'s' if n != 1 else ''}",
                    key=cache_key("transfer", spec),
                    deps=[spec["adv"], *([spec["source"]] if "source" in spec else []), *targets.values()],
                    spec=spec,
                ),
                "",
            )
    return None, f"needs {labels.get(blocked[0], blocked[0][:12])}, which did not complete"
