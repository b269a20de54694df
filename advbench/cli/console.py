"""What the ``advbench`` command writes to the console: logging levels and run progress.

Three levels of detail (``-q``, default, ``-v``, ``-vv``):

* ``-q``: warnings and errors only;
* default: progress (a tqdm bar in a terminal, else a one-line progress with an ETA at most every
  :data:`PROGRESS_EVERY_S` seconds, and no more often than the time elapsed so far, so that a long
  run prints a handful), one line per finished stage, warnings, then the headline;
* ``-v``: also advbench's own detail (one line per training epoch, DkNN timings, the stage table);
* ``-vv``: debug output, third-party libraries' INFO and DEBUG lines (faiss, Ray, matplotlib...) included.

Library modules only ever call ``logging.getLogger(__name__)``; the levels are decided here.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable

from tqdm.auto import tqdm

from advbench.suite.execute import CellReport
from advbench.suite.plan import Plan

__all__ = ["PROGRESS_EVERY_S", "RunProgress", "configure_logging", "console"]

#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 10.0

#: The logger the command's own console lines go to (progress, stages); shown at the default level.
CONSOLE = "advbench.cli.console"

#: Third-party loggers held at WARNING unless ``-vv`` (their INFO is noise for a user).
THIRD_PARTY = ("faiss", "faiss.loader", "ray", "matplotlib", "foolbox", "torchattacks", "PIL", "urllib3", "filelock")


def console() -> logging.Logger:
    """The logger for the command's own console lines."""
    return logging.getLogger(CONSOLE)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes through ``tqdm.write`` in a terminal, so log lines do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if self.stream.isatty():
                tqdm.write(msg, file=self.stream)
            else:
                self.stream.write(msg + "\n")
                self.flush()
        except Exception:  # logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    """Plain messages for the console's own INFO lines; time, level and logger name for the rest."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == CONSOLE and record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Set the console's log levels for ``-q`` / default / ``-v`` / ``-vv`` (see the module docstring)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Handler):
            root.removeHandler(h)
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    debug = verbose >= 2
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if quiet:
        levels = {"advbench": logging.WARNING, CONSOLE: logging.WARNING}
    elif verbose == 0:
        # advbench's own detail (epochs, timings, stage tables) waits for -v; downloads are shown
        levels = {"advbench": logging.WARNING, CONSOLE: logging.INFO, "advbench.data": logging.INFO}
    else:
        levels = {"advbench": logging.DEBUG if debug else logging.INFO, CONSOLE: logging.INFO}
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    for name in ("advbench", CONSOLE, "advbench.data"):
        logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class RunProgress:
    """Progress of a run from its cell reports: periodic lines with an ETA and one line per finished stage.

    The ETA scales the plan's per-cell estimates (:attr:`~advbench.suite.plan.Cell.estimate_s`) by the
    speed observed so far; cells that came from the cache take their estimate out of the work.
    ``periodic`` is False in a terminal, where the executor's tqdm bar shows the progress.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        periodic: bool = True,
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.periodic = periodic
        self.every_s = every_s
        self.clock = clock
        self.start = self.last = self.last_report = clock()
        self.estimates = {c.key: c.estimate_s for c in plan.cells}
        self.total_work = sum(self.estimates.values())
        self.done_work = 0.0
        self.sizes = Counter(c.kind for c in plan.cells)
        self.finished: Counter[str] = Counter()
        self.cached: Counter[str] = Counter()
        self.not_ok: Counter[str] = Counter()
        self.stage_start: dict[str, float] = {}
        self.n_done = 0
        self.log = console()

    def eta(self) -> float | None:
        """Seconds left, from the estimates scaled by the speed so far (None before any computed work)."""
        left = max(0.0, self.total_work - self.done_work)
        elapsed = self.clock() - self.start
        if self.done_work <= 0:
            return None
        return left * elapsed / self.done_work

    def __call__(self, report: CellReport) -> None:
        now = self.clock()
        kind = report.kind
        self.stage_start.setdefault(kind, self.last_report)
        self.last_report = now
        self.n_done += 1
        self.finished[kind] += 1
        estimate = self.estimates.get(report.key, 0.0)
        if report.status == "ok" and report.cached:
            self.cached[kind] += 1
            self.total_work -= estimate
        else:
            self.done_work += estimate
            if report.status != "ok":
                self.not_ok[kind] += 1
        if self.finished[kind] == self.sizes.get(kind, -1):
            self._stage_line(kind, now)
        elif self.periodic and now - self.last >= max(self.every_s, self.last - self.start):
            # the gap grows with the time already run, so a slow run's console stays short
            self._progress_line(now, report.label)

    def _progress_line(self, now: float, label: str) -> None:
        self.last = now
        eta = self.eta()
        total = len(self.plan.cells)
        self.log.info(
            "  %d/%d cells (%d%%), %s elapsed, %s; last: %s",
            self.n_done,
            total,
            round(100 * self.n_done / max(1, total)),
            _duration(now - self.start),
            "ETA unknown" if eta is None else f"about {_duration(eta)} left",
            label,
        )

    def _stage_line(self, kind: str, now: float) -> None:
        self.last = now
        n, hits, bad = self.sizes[kind], self.cached[kind], self.not_ok[kind]
        parts = [f"{n} cell{'s' if n != 1 else ''}"]
        if hits:
            parts.append(f"{hits} from cache")
        if bad:
            parts.append(f"{bad} failed or skipped")
        eta = self.eta()
        left = "" if eta is None or self.n_done == len(self.plan.cells) else f"; about {_duration(eta)} left"
        self.log.info(
            "%-10s done: %s in %s (%d/%d cells%s)",
            kind,
            ", ".join(parts),
            _duration(now - self.stage_start[kind]),
            self.n_done,
            len(self.plan.cells),
            left,
        )
