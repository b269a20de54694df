"""Load and validate a suite file, reporting every problem at once before anything runs.

Each problem is one line, ``FILE:LINE: FIELD: given ...; expected ...; hint``, so an editor can jump
to it; unknown registry names come with close matches (in the spirit of torchtune's ``validate``).
Validation reads the file and the registries only: nothing is run, downloaded or written.

The package follows the four steps of a validation:

* :mod:`~advbench.suite.validate.yaml_lines` reads the YAML and maps every field to its line;
* :mod:`~advbench.suite.validate.messages` turns pydantic's errors into the suite's own words;
* :mod:`~advbench.suite.validate.keywords` checks the keyword arguments of datasets, models and
  attacks against their signatures (with :func:`advbench.params.check_params`);
* :mod:`~advbench.suite.validate.checks` checks names against the registries, sizes against the
  dataset, fields that exclude each other, layer names and missing attack backends;
* :mod:`~advbench.suite.validate.resources` checks the paths a suite names, the memory its data
  would need, its seeds and the OOD set's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advbench.config import Suite
from advbench.errors import ConfigError
from advbench.params import check_params
from advbench.suite.validate.checks import cross_field_problems, layer_problems, registry_problems
from advbench.suite.validate.messages import TOP_KEYS, PathT, Problems, kind_of, pydantic_message
from advbench.suite.validate.resources import resource_problems
from advbench.suite.validate.yaml_lines import read_suite_file

__all__ = ["check_params", "load_suite", "validate_suite_dict"]


def load_suite(path: str | Path) -> Suite:
    """Read, parse and fully validate a suite file; raises :class:`ConfigError` with all problems."""
    data, lines, duplicates = read_suite_file(Path(path))
    return validate_suite_dict(data, source=str(path), lines=lines, _extra=duplicates)


def validate_suite_dict(
    data: Any,
    *,
    source: str = "<suite>",
    lines: dict[PathT, int] | None = None,
    _extra: list[tuple[PathT, str]] | None = None,
) -> Suite:
    """Validate an already-parsed suite (a dict) against the schema and the registries."""
    report = Problems(source, lines or {})
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {kind_of(data)}"
        report.add((), f"given {got}; expected a mapping with the keys {TOP_KEYS} (see suites/quick.yaml)")
        raise ConfigError(source, report.items)
    for loc, msg in _extra or ():
        report.add(loc, msg)
    suite: Suite | None = None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            report.add(loc, pydantic_message(err, loc))
    registry_problems(data, report)
    if suite is not None:
        cross_field_problems(suite, data, report)
        layer_problems(suite, report)
        resource_problems(suite, report)
    if report.items or suite is None:
        raise ConfigError(source, report.items)
    return suite
