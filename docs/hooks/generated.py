"""MkDocs hook: pages generated at build time, so they cannot drift from their sources.

* ``reference/suite.md``: the suite file reference, from the pydantic models' field descriptions
  (:func:`advbench.config.schema.suite_reference`, also printed by ``advbench schema --markdown``);
* ``changelog.md``: the repository's ``CHANGELOG.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

from advbench.config.schema import suite_reference

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/suite.md", content=suite_reference()))
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text(encoding="utf-8")))
    return files
