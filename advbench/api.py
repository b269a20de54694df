"""advbench from Python: run a suite, plan it, load a finished run, render its report.

The ``advbench`` command is a thin layer over these functions::

    import advbench

    run = advbench.run("suites/quick.yaml")          # a path, a parsed mapping or a Suite object
    run.claims                                        # pandas DataFrames: .clean, .transfer, .dknn, ...
    print(run.headline())

    paper = advbench.load("reports/transfer/run")     # a finished run folder
    paper.claims[["claim", "verdict", "estimate"]]

Every function takes the options of the matching command (``advbench run --help``); errors are
:class:`~advbench.errors.AdvbenchError` (a suite's problems: :class:`~advbench.errors.ConfigError`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from advbench.analysis.headline import headline as headline_of
from advbench.analysis.results import Results
from advbench.config import Suite
from advbench.config.schema import suite_schema
from advbench.errors import AdvbenchError, ConfigError
from advbench.io import display_path, project_root, relative_to_project, suite_path_problems
from advbench.reports.headline import render_headline
from advbench.reports.markdown import check_report_path, suite_identity, write_run_report
from advbench.suite.context import RunOptions
from advbench.suite.execute import CellReport
from advbench.suite.paths import report_template_problems, resolve_report_path
from advbench.suite.plan import Plan, describe_plan
from advbench.suite.rundir import RunDir
from advbench.suite.runner import Renderer, Runner
from advbench.suite.threads import AUTO, MAX_THREADS, check_local_threads, resolve_threads
from advbench.suite.validate import load_suite, validate_suite_dict
from advbench.suite.validate.yaml_lines import read_suite_file

__all__ = [
    "Run",
    "check_against_schema",
    "load",
    "markdown_renderer",
    "plan",
    "read_manifest",
    "render_report",
    "run",
    "run_folder",
    "run_options",
    "suite_of",
]

log = logging.getLogger(__name__)

#: what :func:`run` and :func:`plan` take as a suite: a YAML path, a parsed mapping, or a validated Suite
SuiteLike = str | Path | Mapping[str, Any] | Suite
#: the longest ``time_limit`` (a timer that long is no limit)
MAX_TIME_LIMIT_S = 30 * 24 * 3600.0


@dataclass
class Run:
    """A run's results as pandas DataFrames, with its manifest, headline and report.

    The tables (each one row per seed and more, tidy; ``.tables()`` lists them):

    * ``claims``: one row per pre-registered claim: verdict, estimate, interval, p-value (Holm-adjusted);
    * ``clean``: clean test accuracy per model and seed;
    * ``transfer``: the transfer metrics (source, target, attack, eps, seed, metric, value, numerator, denominator);
    * ``dknn``: DkNN credibility and calibration per model, seed and input set;
    * ``training``: per-epoch training history; ``outcomes``: one row per attacked example and target;
    * ``paired``: paired differences of every model against the reference, with seed-level intervals;
    * ``worst_case``: per-example worst case over the attacks (robust accuracy per model, seed and eps);
    * ``failures``: the cells that failed or were skipped (empty when everything ran).
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    results: Results = field(repr=False)
    #: the report this run's suite writes (None for a run loaded without one)
    report_path: Path | None = None

    def __repr__(self) -> str:
        seeds = self.suite.get("seeds") or []
        models = [m["name"] for m in self.suite.get("models") or []]
        state = "complete" if self.complete else f"incomplete: {len(self.failures)} failed cells"
        return f"<Run {self.name!r} at {display_path(self.path)}: {len(models)} models x {len(seeds)} seeds, {state}>"

    @property
    def name(self) -> str:
        return str(self.results.suite["name"])

    @property
    def suite(self) -> dict[str, Any]:
        """The resolved suite the run computed, as a mapping."""
        return self.results.suite

    @property
    def complete(self) -> bool:
        """Whether every cell finished (else the tables lack what the failed cells would have made)."""
        return self.manifest.get("status") == "complete" and self.failures.empty

    @property
    def claims(self) -> pd.DataFrame:
        return self.results.claims()

    @property
    def clean(self) -> pd.DataFrame:
        return self.results.clean

    @property
    def transfer(self) -> pd.DataFrame:
        return self.results.metrics

    @property
    def dknn(self) -> pd.DataFrame:
        return self.results.dknn

    @property
    def training(self) -> pd.DataFrame:
        return self.results.training

    @property
    def outcomes(self) -> pd.DataFrame:
        return self.results.outcomes

    @property
    def paired(self) -> pd.DataFrame:
        return self.results.paired()

    @property
    def worst_case(self) -> pd.DataFrame:
        return self.results.worst_case()

    @property
    def failures(self) -> pd.DataFrame:
        return self.results.failures

    @staticmethod
    def tables() -> list[str]:
        """The names of the DataFrame attributes."""
        return ["claims", "clean", "transfer", "dknn", "training", "outcomes", "paired", "worst_case", "failures"]

    def headline(self) -> str:
        """What ``advbench show`` prints: accuracies with their intervals and the claims' verdicts."""
        return render_headline(headline_of(self.results), report=self._report_label(), run_dir=display_path(self.path))

    def _report_label(self) -> str:
        """Where the report is, as ``advbench run`` printed it."""
        if self.report_path is not None:
            return display_path(self.report_path)
        recorded = self.manifest.get("report")
        if isinstance(recorded, str):  # "<outside project> ..."
            return recorded
        return str(self.suite["report"]["output"]).format(name=self.name)

    def report(self, output: str | Path | None = None, *, replace: bool = False) -> Path:
        """Render the Markdown report (default: where the suite's ``report.output`` puts it); its path.

        Like ``advbench report RUN_DIR``: the figures go beside it; a report another suite made is
        replaced only with ``replace``.
        """
        out = render_report(self.path, output, replace=replace)
        self.report_path = out
        return out

    def _repr_markdown_(self) -> str:  # a notebook shows the headline
        return "```text\n" + self.headline() + "\n```"


def suite_of(suite: SuiteLike) -> tuple[Suite, str]:
    """The validated :class:`Suite` of ``suite`` and its source (the path, or ``"<python>"``).

    Raises :class:`ConfigError` with every problem, as ``advbench validate`` reports them.
    """
    if isinstance(suite, str | Path):
        return load_suite(suite), str(suite)
    if isinstance(suite, Suite):
        return validate_suite_dict(suite.model_dump(mode="json", exclude_unset=True), source="<python>"), "<python>"
    if isinstance(suite, Mapping):
        return validate_suite_dict(dict(suite), source="<python>"), "<python>"
    raise AdvbenchError(
        f"suite: given a {type(suite).__name__}; expected a path to a suite file, a mapping or an advbench Suite"
    )


def run_options(
    *,
    runs_dir: str | Path = "runs",
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    report: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    executor: str = "local",
    address: str | None = None,
    fail_fast: bool = False,
    time_limit: float | None = None,
    threads: int | str | None = None,
    workers: int | None = None,
) -> RunOptions:
    """The :class:`RunOptions` of the keyword options, each checked as the CLI checks its flag."""
    if executor not in ("local", "ray"):
        raise AdvbenchError(f"executor={executor!r}; expected 'local' or 'ray'")
    if device not in (None, "cpu", "cuda", "auto"):
        raise AdvbenchError(f"device={device!r}; expected 'cpu', 'cuda' or 'auto' (or None: the suite's)")
    if address and executor != "ray":
        raise AdvbenchError(
            f"address={address!r} (--address) is for the Ray executor; add executor='ray' (add --executor ray)"
        )
    if executor == "ray":
        from advbench.suite.ray_executor import require_ray  # Ray is optional: fail before anything runs

        require_ray()
    if time_limit is not None and not (0 < time_limit <= MAX_TIME_LIMIT_S and math.isfinite(time_limit)):
        raise AdvbenchError(
            f"time_limit={time_limit!r}; expected a positive number of seconds up to {MAX_TIME_LIMIT_S:,.0f} "
            "(30 days), or None for no limit"
        )
    if isinstance(threads, str) and threads.strip().lower() != AUTO:
        raise AdvbenchError(f"threads={threads!r}; expected a whole number 1..{MAX_THREADS} or 'auto'")
    if isinstance(threads, str):
        threads = AUTO
    for what, n in (("threads", threads), ("workers", workers)):
        if isinstance(n, bool) or (n is not None and n != AUTO and not (isinstance(n, int) and 1 <= n <= MAX_THREADS)):
            raise AdvbenchError(f"{what}={n!r}; expected a whole number 1..{MAX_THREADS} (or None: the default)")
    if executor == "local" and isinstance(threads, int):
        try:
            check_local_threads(threads)
        except ValueError as exc:
            raise AdvbenchError(str(exc)) from None
    for what, value in (("runs_dir", runs_dir), ("cache_dir", cache_dir)):
        if value and Path(value).exists() and not Path(value).is_dir():
            flag = "--" + what.replace("_", "-")
            raise AdvbenchError(
                f"{what}={str(value)!r} ({flag} {value}): is a file; expected a folder (it is created if missing)"
            )
    return RunOptions(
        runs_dir=str(runs_dir),
        cache_dir=None if cache_dir is None else str(cache_dir),
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        report=None if report is None else str(report),
        resume=resume,
        progress=progress,
        executor=executor,
        address=address,
        fail_fast=fail_fast,
        time_limit=time_limit,
        threads=resolve_threads(threads),
        threads_auto=threads == AUTO,
        workers=workers,
    )


def markdown_renderer(
    suite: Suite, output: str | Path | None = None, *, source: str | None = None, replace: bool = False
) -> Renderer:
    """A renderer writing the Markdown report to ``output`` (default: the suite's ``report.output``).

    The path is checked now, before anything runs: the suite's must lie in the project's reports
    folder, neither may be a file advbench did not write, and a report another suite made (``source``:
    this suite's file) is replaced only with ``replace`` (:func:`check_report_path`).
    """
    suite_id = suite_identity(suite.name, relative_to_project(source) if source else None)
    out = check_report_path(
        resolve_report_path(suite, None if output is None else str(output)), suite_id=suite_id, replace=replace
    )

    def render(results: Results, run_dir: RunDir) -> None:
        run_dir.manifest["report"] = relative_to_project(out)  # for `advbench show`
        manifest = dict(run_dir.manifest) | {"run_dir": relative_to_project(run_dir.path)}
        write_run_report(results, out, results_dir=run_dir.results, manifest=manifest, suite_id=suite_id)

    return render


def run(
    suite: SuiteLike,
    *,
    replace_report: bool = False,
    on_cell: Callable[[CellReport], None] | None = None,
    on_plan: Callable[[Plan], Callable[[CellReport], None]] | None = None,
    **options: Any,
) -> Run:
    """Run ``suite`` end to end (cached and resumable, as ``advbench run``) and return its :class:`Run`.

    ``options`` are those of ``advbench run``: ``runs_dir``, ``cache_dir``, ``data_dir``, ``device``,
    ``report`` (the Markdown path), ``resume``, ``executor`` ("local" or "ray"), ``address``, ``fail_fast``,
    ``time_limit``, ``threads`` (an int or "auto"), ``workers`` and ``progress`` (tqdm bars; default off).
    ``on_cell`` is called with each cell's report as it finishes; ``on_plan``, given the plan before any
    cell runs, returns such a callback instead (the CLI's progress display counts the plan's cells). Cells
    that fail are recorded, not raised (unless ``fail_fast``): check :attr:`Run.complete` and
    :attr:`Run.failures`.
    """
    suite_obj, source = suite_of(suite)
    opts = run_options(**options)
    # before any data is loaded or cell run: a refused report path fails here
    render = markdown_renderer(suite_obj, opts.report, source=source, replace=replace_report)
    runner = Runner(suite_obj, source=source, options=opts)
    if on_plan is not None:
        on_cell = on_plan(runner.plan)
    run_dir = runner.run(render=render, on_cell=on_cell)
    if runner.results is None:  # the runner saves results even when cells failed; this is a broken run folder
        raise AdvbenchError(f"{run_dir.path}: the run saved no results; see its manifest.json")
    return Run(
        path=run_dir.path,
        manifest=dict(run_dir.manifest),
        results=runner.results,
        report_path=resolve_report_path(suite_obj, opts.report),
    )


def plan(suite: SuiteLike, **options: Any) -> pd.DataFrame:
    """The cells ``run(suite, **options)`` would compute, one row each, with whether each is cached.

    Columns as ``advbench run --plan`` prints them (``cell``, ``kind``, ``cached``, ``estimate_s``, ...).
    Computes nothing and writes nothing.
    """
    suite_obj, source = suite_of(suite)
    runner = Runner(suite_obj, source=source, options=run_options(**options))
    return pd.DataFrame(describe_plan(runner.plan, runner.ctx.cache))


def run_folder(run_dir: str | Path) -> Path:
    """The run folder ``run_dir`` names: the folder itself, or the ``run`` folder inside a report's folder."""
    folder = Path(run_dir)
    if not (folder / "manifest.json").is_file() and (folder / "run" / "manifest.json").is_file():
        return folder / "run"
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    """A run folder's manifest, checked: a clear error for a folder that is not a run or a damaged manifest."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise AdvbenchError(
            f"{folder}: no manifest.json; expected a run folder written by `advbench run` (e.g. runs/quick-... "
            "or reports/transfer/run)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdvbenchError(
            f"{path}: damaged ({exc}); expected the JSON manifest `advbench run` writes. Re-run the suite with "
            "`advbench run SUITE` to make a new run folder"
        ) from None
    if not isinstance(manifest, dict):
        raise AdvbenchError(f"{path}: damaged (not a JSON object); re-run the suite with `advbench run SUITE`")
    return manifest


def load(run_dir: str | Path, *, per_example: bool = True) -> Run:
    """A finished run folder's results (``runs/<suite>-<time>``, or a report's ``reports/<suite>/run``).

    The results' checksums are verified first (a tampered or damaged table is an error). With
    ``per_example=False`` the per-example DkNN table (tens of MB) is not read; its saved per-seed
    summaries stand in for it, as they do in a committed run folder that lacks it.
    """
    folder = run_folder(run_dir)
    manifest = read_manifest(folder)
    results = Results.load(folder / "results", per_example=per_example)
    recorded = manifest.get("report")
    report = None
    if isinstance(recorded, str) and not recorded.startswith("<outside project>"):
        report = project_root() / recorded
    return Run(path=folder, manifest=manifest, results=results, report_path=report)


def render_report(run_dir: str | Path, output: str | Path | None = None, *, replace: bool = False) -> Path:
    """Re-render a complete run's Markdown report from its saved results (``advbench report``); its path."""
    folder = run_folder(run_dir)
    manifest = read_manifest(folder)
    status = manifest.get("status")
    if status != "complete":
        # an incomplete run's results miss whole sections; a report of them would look like a full one
        why = f": {manifest['error']}" if manifest.get("error") else ""
        raise AdvbenchError(
            f"{folder}: the run is not complete (status {status!r}{why}); its results lack the cells it did not "
            f"finish, so no report is written. Run `advbench run {manifest.get('suite_file', 'SUITE')}` again: it "
            f"resumes from the cache and writes the report"
        )
    results = Results.load(folder / "results")
    suite_id = suite_identity(str(results.suite["name"]), manifest.get("suite_file"))
    out = check_report_path(
        Path(output) if output is not None else _suite_output(results.suite), suite_id=suite_id, replace=replace
    )
    # the derived tables (claims, paired comparisons) as the analysis code computes them now, as the report does
    results.save_derived(folder / "results")
    manifest["run_dir"] = relative_to_project(folder)
    # rendered even when up to date (that is what the command is for); its stamp lets a re-run skip it
    write_run_report(results, out, results_dir=folder / "results", manifest=manifest, force=True, suite_id=suite_id)
    return out


def _suite_output(suite: dict[str, Any]) -> Path:
    """The report path the run's suite names, checked like a suite file's (inside reports/, {name} only)."""
    problems = report_template_problems(suite["report"].get("output"))
    if problems:
        raise AdvbenchError("; ".join(problems))
    value = str(suite["report"]["output"]).format(name=suite["name"])
    found = suite_path_problems(value, field="report.output", allowed_roots=[project_root() / "reports"])
    if found:
        raise AdvbenchError("; ".join(found) + "; or pass --output")
    return Path(value)


def check_against_schema(path: str | Path) -> list[str]:
    """The problems ``advbench schema FILE`` reports: where the file departs from the suite's JSON Schema.

    Each names the field's path and line and what the schema expects. The shape only: the registered
    names and parameters are ``advbench validate``'s to check.
    """
    import jsonschema  # the reference implementation of JSON Schema; only this command needs it

    try:
        data, lines, _ = read_suite_file(Path(path))
    except ConfigError as exc:
        return [str(exc)]
    validator = jsonschema.Draft202012Validator(suite_schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        where = tuple(error.absolute_path)
        label = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in where).replace(".[", "[") or "(top level)"
        line = next((lines[where[:n]] for n in range(len(where), -1, -1) if where[:n] in lines), None)
        at = f" (line {line})" if line else ""
        problems.append(f"{label}{at}: {error.message}")
    return problems
