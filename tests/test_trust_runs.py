"""Whole runs with hostile plugins, no DkNN and a full disk: each ends cleanly, with the blame in the right place."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from advbench.analysis.results import Results
from advbench.api import markdown_renderer
from advbench.attacks import ATTACKS
from advbench.attacks.base import Attack, ThreatModel
from advbench.config import Suite
from advbench.io import DiskFullError
from advbench.suite.context import RunOptions
from advbench.suite.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


class _Exits(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        raise SystemExit(0)


class _ExitsInInit(Attack):
    def __init__(self) -> None:
        raise SystemExit("bye")

    def run(self, model, x, y, threat: ThreatModel, generator):
        return x.clone()


class _GradOff(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        torch.set_grad_enabled(False)
        return x.clone()


class _LeavesHook(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        next(iter(model.modules())).register_forward_hook(lambda m, i, o: o * 0)
        return x.clone()


class _Swallows(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        for _ in range(3600):
            try:
                time.sleep(1)
            except BaseException:  # a hostile plugin swallows everything
                pass
        return x


BAD = {
    "w17-exits": (_Exits, "sys.exit"),
    "w17-exits-in-init": (_ExitsInInit, "sys.exit"),
    "w17-grad-off": (_GradOff, "grad mode"),
    "w17-leaves-hook": (_LeavesHook, "forward hooks"),
}


@pytest.fixture(scope="module", autouse=True)
def bad_attacks():
    for name, (cls, _) in {**BAD, "w17-swallows": (_Swallows, "")}.items():
        ATTACKS.add(name, cls, source="tests")
    yield
    for name in [*BAD, "w17-swallows"]:
        ATTACKS.unregister(name)


def _suite(**changes) -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    doc.update(changes)
    return Suite.model_validate(doc)


def _run(suite: Suite, tmp: Path, name: str, **opts) -> Runner:
    runner = Runner(
        suite,
        source=f"{name}.yaml",
        options=RunOptions(
            runs_dir=str(tmp / "runs"),
            cache_dir=str(tmp / "cache"),
            report=str(tmp / f"{name}.md"),
            progress=False,
            threads=1,
            **opts,
        ),
    )
    runner.run(render=markdown_renderer(runner.suite, runner.opt.report))
    return runner


def _manifest(tmp: Path) -> dict:
    return json.loads(next((tmp / "runs").glob("*/manifest.json")).read_text())


def test_each_bad_plugin_fails_its_own_cell_and_later_cells_are_unaffected(tmp_path):
    # the bad ones run before the good one, in the same process, without a time limit
    attacks = [{"name": n, "eps": [0.1]} for n in BAD] + [{"name": "fgsm", "eps": [0.1]}]
    mixed = _run(_suite(attacks=attacks), tmp_path / "mixed", "mixed")
    clean = _run(_suite(attacks=[{"name": "fgsm", "eps": [0.1]}]), tmp_path / "clean", "clean")
    failures = pd.DataFrame(mixed.failures)
    for name, (_, needle) in BAD.items():
        rows = failures[(failures["kind"] == "attack") & failures["cell"].str.contains(f"attack {name} ")]
        assert len(rows) == 2 and (rows["status"] == "failed").all(), failures
        assert needle in rows["error"].iloc[0], rows["error"].iloc[0]
    assert not failures["cell"].str.contains("fgsm").any()
    assert torch.is_grad_enabled()
    m = _manifest(tmp_path / "mixed")
    assert m["status"] == "complete" and m["failed_cells"] == len(mixed.failures)
    assert (tmp_path / "mixed" / "mixed.md").is_file()
    a, b = clean.results.metrics, mixed.results.metrics
    pd.testing.assert_frame_equal(
        a.sort_values(list(a.columns)).reset_index(drop=True), b.sort_values(list(b.columns)).reset_index(drop=True)
    )


def test_a_plugin_that_swallows_every_exception_is_still_stopped(tmp_path):
    t0 = time.perf_counter()
    runner = _run(_suite(attacks=[{"name": "w17-swallows", "eps": [0.1]}]), tmp_path, "swallow", time_limit=2.0)
    assert time.perf_counter() - t0 < 120
    errors = [f["error"] for f in runner.failures if f["kind"] == "attack"]
    assert len(errors) == 2 and all("time limit of 2 s" in e for e in errors)
    assert _manifest(tmp_path)["status"] == "complete"


def test_a_suite_without_dknn_runs_end_to_end(tmp_path):
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    del doc["evaluations"]["dknn"]
    runner = _run(Suite.model_validate(doc | {"seeds": [0]}), tmp_path, "nodknn")
    assert not runner.failures and len(runner.results.metrics)
    assert _manifest(tmp_path)["status"] == "complete"
    assert "transfer" in (tmp_path / "nodknn.md").read_text().lower()


def test_a_full_disk_while_saving_results_never_marks_the_run_complete(tmp_path, monkeypatch):
    def full(self, folder):
        raise DiskFullError(f"no space left on the device holding {folder}", path=folder)

    monkeypatch.setattr(Results, "save", full)
    with pytest.raises(DiskFullError):
        _run(_suite(attacks=[{"name": "fgsm", "eps": [0.1]}]), tmp_path, "full")
    m = _manifest(tmp_path)
    assert m["status"] == "failed" and "DiskFullError" in m["error"]
    assert not (tmp_path / "full.md").exists()
