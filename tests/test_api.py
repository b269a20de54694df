"""The Python API (advbench.run / plan / load / render_report): what a notebook user calls."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import advbench
from advbench import api
from advbench.config import Suite
from advbench.errors import AdvbenchError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "reports" / "transfer" / "run"
TINY = {
    "name": "api-tiny",
    "dataset": {"name": "digits", "splits": {"train": 300, "test": 100}},
    "models": [{"name": "baseline", "architecture": "cnn-digits", "recipe": {"epochs": 1}}],
}


@pytest.fixture(scope="module")
def paper() -> api.Run:
    return advbench.load(PAPER, per_example=False)


def test_the_package_exposes_the_api_lazily():
    assert advbench.load is api.load and advbench.run is api.run and advbench.plan is api.plan
    assert advbench.Run is api.Run
    assert advbench.schema()["title"] == "Suite"
    with pytest.raises(AttributeError, match="no attribute 'lod'"):
        advbench.lod


def test_load_gives_the_claims_of_the_committed_run_as_a_dataframe(paper):
    claims = paper.claims
    assert isinstance(claims, pd.DataFrame)
    committed = pd.read_csv(PAPER / "results" / "claims.csv")
    assert claims["name"].tolist() == committed["name"].tolist()
    assert claims["verdict"].tolist() == committed["verdict"].tolist()
    assert len(claims) == 7 and set(claims["verdict"]) <= {"supported", "contradicted", "inconclusive"}


def test_every_table_is_a_dataframe_with_rows(paper):
    for name in paper.tables():
        table = getattr(paper, name)
        assert isinstance(table, pd.DataFrame), name
        assert name == "failures" or not table.empty, name
    assert set(paper.clean["model"]) == {"baseline", "entangled", "disentangled"}
    assert sorted(paper.clean["seed"].unique()) == list(range(8))
    assert {"source", "target", "metric", "value", "denominator"} <= set(paper.transfer.columns)


def test_a_run_knows_its_suite_manifest_and_report(paper):
    assert paper.name == "transfer" and paper.complete
    assert paper.manifest["status"] == "complete"
    assert paper.report_path == ROOT / "reports" / "transfer.md"
    assert repr(paper) == "<Run 'transfer' at reports/transfer/run: 3 models x 8 seeds, complete>"
    text = paper.headline()
    assert text.startswith("Results:") and "Claims (findings: 1 supported, 4 contradicted" in text
    assert text.endswith("Report: reports/transfer.md; run folder: reports/transfer/run")
    assert paper._repr_markdown_().startswith("```text\nResults:")


def test_load_takes_the_report_folder_too():
    assert advbench.load(PAPER.parent, per_example=False).path == PAPER.parent / "run"


def test_load_of_a_folder_that_is_not_a_run_names_what_is_missing(tmp_path):
    with pytest.raises(AdvbenchError, match=r"no manifest\.json; expected a run folder"):
        advbench.load(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(AdvbenchError, match="damaged"):
        advbench.load(tmp_path)


def test_load_refuses_tampered_results(tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(PAPER, copy)
    clean = copy / "results" / "clean.csv"
    clean.write_text(clean.read_text().replace("0.9", "0.8", 1))
    with pytest.raises(AdvbenchError, match=r"clean\.csv"):
        advbench.load(copy)


def test_render_report_refuses_an_incomplete_run(tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(PAPER, copy)
    manifest = json.loads((copy / "manifest.json").read_text()) | {"status": "running"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdvbenchError, match="not complete"):
        advbench.render_report(copy, tmp_path / "report.md")


def test_a_suite_is_a_path_a_mapping_or_a_suite_object():
    from_map, source = api.suite_of(TINY)
    assert source == "<python>" and from_map.name == "api-tiny"
    assert api.suite_of(Suite.model_validate(TINY))[0] == from_map
    assert api.suite_of(ROOT / "suites" / "quick.yaml")[0].name == "quick"
    with pytest.raises(AdvbenchError, match="given a int; expected a path"):
        api.suite_of(3)  # type: ignore[arg-type]


def test_a_bad_suite_mapping_names_the_field():
    bad = TINY | {"modles": []}
    with pytest.raises(ConfigError, match="modles"):
        api.suite_of(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"executor": "dask"}, "executor='dask'; expected 'local' or 'ray'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"threads": 0}, "threads=0; expected a whole number"),
        ({"threads": "many"}, "threads='many'"),
        ({"workers": True}, "workers=True"),
        ({"time_limit": -1.0}, "time_limit=-1.0"),
        ({"time_limit": float("inf")}, "time_limit=inf"),
        ({"address": "1.2.3.4:6379"}, "add executor='ray'"),
    ],
)
def test_options_are_checked_like_the_cli_flags(options, message):
    with pytest.raises(AdvbenchError, match=message.replace("(", r"\(").replace(".", r"\.")):
        api.run_options(**options)


def test_options_map_onto_the_runner(tmp_path):
    opts = api.run_options(runs_dir=tmp_path / "runs", threads="auto", workers=2, time_limit=60)
    assert opts.runs_dir == str(tmp_path / "runs") and opts.threads_auto and opts.workers == 2
    assert opts.progress is False  # a notebook gets no progress bars unless it asks
    (tmp_path / "file").write_text("")
    with pytest.raises(AdvbenchError, match="is a file; expected a folder"):
        api.run_options(cache_dir=tmp_path / "file")


def test_run_refuses_an_unknown_option_before_anything_runs(tmp_path):
    with pytest.raises(TypeError, match="runs_folder"):
        advbench.run(TINY, runs_folder=tmp_path)
    assert not (tmp_path / "runs").exists()
