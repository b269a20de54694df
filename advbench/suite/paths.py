"""Where a run writes: the report, the cache and the run folders, from the command line, the environment or the suite.

A suite file is data people share, so the paths it names are checked (:func:`suite_path_problems`
of :mod:`advbench.io`): relative, no ``..`` or ``~``, and, with every symlink followed, inside the
project's folder for that kind of output (:data:`SUITE_PATH_ROOTS`). A path given on the command
line or in ``$ADVBENCH_CACHE`` is the user's own choice and is not checked. Priority, highest first:
command line, environment (cache only), suite, default.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

from advbench.config import Suite
from advbench.errors import ConfigError
from advbench.io import project_root, suite_path_problems
from advbench.suite.cache import default_cache_dir

__all__ = [
    "SUITE_PATH_ROOTS",
    "report_template_problems",
    "resolve_cache_dir",
    "resolve_report_path",
    "suite_paths_problems",
]

#: The project folders (relative to the project root, the git work tree) a suite's path fields may name.
SUITE_PATH_ROOTS: dict[str, tuple[str, ...]] = {
    "report.output": ("reports",),
    "cache_dir": (".cache",),
}


def report_template_problems(template: Any) -> list[str]:
    """Problems with ``report.output`` as a template: only the ``{name}`` placeholder, no conversion or format."""
    if not isinstance(template, str):
        return []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"report.output: {template!r} is not a valid template ({exc}); write {{name}} or escape braces as {{{{"]
    bad = [
        f"{{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
        for _, f, spec, conv in parsed
        if f is not None and (f != "name" or spec or conv)
    ]
    if bad:
        return [
            f"report.output: {template!r} uses {', '.join(bad)}; expected only {{name}} (the suite's name), "
            f"or braces escaped as {{{{ and }}}}"
        ]
    return []


def _report_value(suite: Suite) -> str:
    return suite.report.output.format(name=suite.name)


def suite_paths_problems(suite: Suite, *, base: str | Path | None = None) -> list[tuple[tuple[str, ...], str]]:
    """Every problem with the paths ``suite`` names, as ``(location, message)`` pairs (empty when all are safe)."""
    root = project_root(base)
    out: list[tuple[tuple[str, ...], str]] = []
    template = report_template_problems(suite.report.output)
    if template:
        out += [(("report", "output"), m.removeprefix("report.output: ")) for m in template]
    else:
        roots = [root / r for r in SUITE_PATH_ROOTS["report.output"]]
        for m in suite_path_problems(_report_value(suite), field="report.output", allowed_roots=roots, base=base):
            out.append((("report", "output"), m.removeprefix("report.output: ")))
    if suite.cache_dir is not None:
        roots = [root / r for r in SUITE_PATH_ROOTS["cache_dir"]]
        for m in suite_path_problems(suite.cache_dir, field="cache_dir", allowed_roots=roots, base=base):
            out.append((("cache_dir",), m.removeprefix("cache_dir: ")))
    return out


def _raise(suite: Suite, problems: list[tuple[tuple[str, ...], str]]) -> None:
    if problems:
        raise ConfigError(f"suite {suite.name!r}", [f"{'.'.join(loc)}: {msg}" for loc, msg in problems])


def resolve_report_path(suite: Suite, cli: str | None = None) -> Path:
    """The report's path: ``cli`` (``--report``, unchecked) else the suite's ``report.output`` (checked)."""
    if cli:
        return Path(cli)
    _raise(suite, [p for p in suite_paths_problems(suite) if p[0][0] == "report"])
    return Path(_report_value(suite))


def resolve_cache_dir(suite: Suite, cli: str | None = None) -> Path:
    """The cache folder: ``cli`` > ``$ADVBENCH_CACHE`` > the suite's ``cache_dir`` (checked) > the default."""
    if cli:
        return Path(cli)
    env = os.environ.get("ADVBENCH_CACHE")
    if env:
        return Path(env)
    if suite.cache_dir is not None:
        _raise(suite, [p for p in suite_paths_problems(suite) if p[0][0] == "cache_dir"])
        return Path(suite.cache_dir)
    return default_cache_dir()
