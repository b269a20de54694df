"""Running one cell, shared by the local and the Ray executors: time limits, failures and what they block.

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
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from advbench.errors import AdvbenchError
from advbench.suite.cache import cache_key, is_disk_full
from advbench.suite.plan import Cell

if TYPE_CHECKING:
    from advbench.suite.runner import Runner, _State

__all__ = ["CellTimeoutError", "execute_cell", "failure_message", "is_fatal", "time_limit", "without_failed"]

log = logging.getLogger(__name__)

#: Cell kinds that run user-supplied code (attack plugins) and so get the per-cell time limit.
TIME_LIMITED = ("attack",)


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


def execute_cell(runner: Runner, cell: Cell, state: _State) -> bool:
    """Compute ``cell`` (or read it from the cache) into ``state``; ``True`` when it was cached."""
    from advbench.suite import cells

    handler = getattr(cells, "run_" + cell.kind.replace("-", "_"))
    limit = runner.opt.time_limit if cell.kind in TIME_LIMITED else None
    with time_limit(limit, cell.label):
        return bool(handler(runner, cell, state))


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
    return None, f"needs {labels.get(blocked[0], blocked[0][:12])}, which did not complete"
