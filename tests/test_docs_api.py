"""docs/python-api.md is a notebook: its code blocks run in order, in a scratch copy of the project's files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python-api.md"
#: the part of the page that reads the committed run (unit tier); the rest runs a suite (integration)
RUNS_A_SUITE = "## Plan and run a suite"


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> dict:
    """Run the page's Python blocks of ``text`` in one namespace, in a scratch project folder."""
    shutil.copytree(ROOT / "reports" / "transfer" / "run", tmp_path / "reports" / "transfer" / "run")
    shutil.copytree(ROOT / "suites", tmp_path / "suites")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    blocks = _blocks(text)
    assert blocks, f"{PAGE}: no python blocks"
    for n, block in enumerate(blocks):
        try:
            exec(compile(block, f"{PAGE.name}[block {n}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{PAGE.name}, block {n} failed:\n{block}") from exc
    return namespace


def test_the_reading_part_of_the_page_runs(tmp_path, monkeypatch):
    text = PAGE.read_text()
    ns = _notebook(tmp_path, monkeypatch, text.split(RUNS_A_SUITE)[0])
    assert repr(ns["paper"]) == "<Run 'transfer' at reports/transfer/run: 3 models x 8 seeds, complete>"
    assert ns["summary"].to_dict() == {"contradicted": 4, "supported": 1}
    assert len(ns["claims"]) == 7 and not ns["clean"].empty and not ns["dknn_auroc"].empty
    assert set(ns["robust"].columns) == {0.02, 0.05, 0.1}


@pytest.mark.integration
def test_the_whole_page_runs_a_suite_from_python(tmp_path, monkeypatch):
    ns = _notebook(tmp_path, monkeypatch, PAGE.read_text())
    run = ns["run"]
    assert run.complete and run.name == "quick"
    assert run.path.resolve().parent == (tmp_path / "runs").resolve()
    assert (tmp_path / "reports" / "quick.md").is_file() and ns["path"] == Path("quick-again.md")
    assert not ns["cells"]["cached"].any()  # planned before the run, from an empty cache
    assert len(ns["variant"]) == len(ns["cells"])
    assert set(run.clean["model"]) == {"baseline", "entangled", "disentangled"}
