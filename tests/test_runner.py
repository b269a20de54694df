"""Faulty attack plugins are reported with their names and the run goes on, unless ``--fail-fast``.

Six kinds of bad attack (raises, NaN, wrong shape, exceeds eps, modifies the weights, hangs past the
time limit) run in one small suite next to a good one; the good one's results must be exactly those
of a run without the bad ones, and every bad one must be in the report's "Failed cells" table.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from advbench.api import markdown_renderer
from advbench.attacks import ATTACKS
from advbench.attacks.base import Attack, ThreatModel
from advbench.attacks.contract import AttackTimeoutError
from advbench.config import Suite
from advbench.errors import ThreatModelError
from advbench.suite.context import RunOptions
from advbench.suite.execute import CellTimeoutError
from advbench.suite.runner import Runner
from advbench.training.regularisers import REGULARISERS, Regulariser

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration  # full runs / forks: integration tier (still in the README's command)


class _Raises(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        raise RuntimeError("plugin bug: index out of range")


class _NaN(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        return torch.full_like(x, float("nan"))


class _WrongShape(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        return x[:, :, :-1]


class _ExceedsEps(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        return (x + 3 * threat.eps).clamp(*threat.bounds)


class _ModifiesWeights(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return x.clone()


class _Hangs(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        time.sleep(3600)
        return x


BAD = {
    "test-raises": (_Raises, "plugin bug: index out of range"),
    "test-nan": (_NaN, "non-finite"),
    "test-wrong-shape": (_WrongShape, "expected shape"),
    "test-exceeds-eps": (_ExceedsEps, "eps"),
    "test-modifies-weights": (_ModifiesWeights, "modified the model's weights"),
    "test-hangs": (_Hangs, "time limit"),
}


@pytest.fixture(scope="module", autouse=True)
def bad_attacks():
    for name, (cls, _) in BAD.items():
        ATTACKS.add(name, cls, source="tests")
    yield
    for name in BAD:
        ATTACKS.unregister(name)


def _suite(attacks: list[dict]) -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    doc["attacks"] = attacks
    return Suite.model_validate(doc)


def _run(suite: Suite, tmp: Path, name: str, cache: Path, **opts) -> Runner:
    runner = Runner(
        suite,
        source=f"{name}.yaml",
        options=RunOptions(
            runs_dir=str(tmp / f"runs-{name}"),
            cache_dir=str(cache),
            report=str(tmp / f"{name}.md"),
            progress=False,
            threads=1,
            **opts,
        ),
    )
    runner.run(render=markdown_renderer(runner.suite, runner.opt.report))
    return runner


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-plugins")
    cache = tmp / "cache"
    good = [{"name": "fgsm", "eps": [0.1]}]
    clean = _run(_suite(good), tmp, "good", cache)
    bad = [{"name": name, "eps": [0.1]} for name in BAD]
    mixed = _run(_suite(bad[:3] + good + bad[3:]), tmp, "mixed", cache, time_limit=2.0)
    return tmp, clean, mixed


def test_every_bad_plugin_is_reported_by_name_and_the_run_goes_on(runs):
    tmp, _clean, mixed = runs
    failures = pd.DataFrame(mixed.failures)
    attack_failures = failures[failures["kind"] == "attack"]
    assert len(attack_failures) == 2 * len(BAD)  # each bad attack on each of the two models
    for name, (_, needle) in BAD.items():
        row = attack_failures[attack_failures["cell"].str.contains(f"attack {name} ")]
        assert len(row) == 2, f"{name} not reported: {attack_failures['cell'].tolist()}"
        assert (row["status"] == "failed").all()
        assert needle in row["error"].iloc[0], row["error"].iloc[0]
    # their transfer cells are skipped, not failed, and say why
    skipped = failures[failures["kind"] == "transfer"]
    assert len(skipped) == 2 * len(BAD) and (skipped["status"] == "skipped").all()
    # the report says so, with the attack names
    report = (tmp / "mixed.md").read_text()
    assert "## Failed cells" in report
    for name in BAD:
        assert name in report


def test_good_cells_are_unaffected_by_the_bad_ones(runs):
    _tmp, clean, mixed = runs
    a, b = clean.results.metrics, mixed.results.metrics
    pd.testing.assert_frame_equal(
        a.sort_values(list(a.columns)).reset_index(drop=True),
        b.sort_values(list(b.columns)).reset_index(drop=True),
        check_exact=True,
    )
    # the weights the bad attack wrote to were restored: clean accuracy is identical
    pd.testing.assert_frame_equal(clean.results.clean, mixed.results.clean, check_exact=True)
    # DkNN scoring went on with the sets that exist (clean and fgsm), under its own cache key
    dknn = mixed.results.dknn
    assert set(dknn["input_set"]) >= {"clean", "fgsm@0.1 from baseline", "fgsm@0.1 from entangled"}
    assert not any(name in s for s in dknn["input_set"] for name in BAD)


def test_failed_cells_are_in_the_manifest_and_retried_on_the_next_run(runs):
    import json

    tmp, _, mixed = runs
    manifest = json.loads(next((tmp / "runs-mixed").glob("*/manifest.json")).read_text())
    assert manifest["failed_cells"] == len(mixed.failures)
    assert {v["status"] for v in manifest["failures"].values()} == {"failed", "skipped"}
    assert not any(name in label for label in manifest["cells"] for name in BAD)


def test_fail_fast_stops_at_the_first_bad_plugin(tmp_path):
    suite = _suite([{"name": "fgsm", "eps": [0.1]}, {"name": "test-exceeds-eps", "eps": [0.1]}])
    with pytest.raises(ThreatModelError, match="eps"):
        _run(suite, tmp_path, "ff", tmp_path / "cache", fail_fast=True)


def test_hanging_attack_is_stopped_at_the_time_limit(tmp_path):
    suite = _suite([{"name": "test-hangs", "eps": [0.1]}])
    t0 = time.perf_counter()
    with pytest.raises((AttackTimeoutError, CellTimeoutError), match="time limit of 1 s"):
        _run(suite, tmp_path, "hang", tmp_path / "cache", fail_fast=True, time_limit=1.0)
    assert time.perf_counter() - t0 < 120


class _LeavesFloat64(Regulariser):
    """A regulariser that sets float64 as torch's default dtype and leaves it so (a guest's worst habit)."""

    def forward(self, feats, y):
        torch.set_default_dtype(torch.float64)
        return {"zero": feats[self.layers[0]].sum() * 0.0}


class _GradOff(Regulariser):
    """A regulariser that turns grad mode off for everything after it."""

    def forward(self, feats, y):
        torch.set_grad_enabled(False)
        return {"zero": feats[self.layers[0]].sum() * 0.0}


@pytest.mark.parametrize(
    ("name", "cls", "needle"),
    [("test-leaves-float64", _LeavesFloat64, "default dtype"), ("test-grad-off", _GradOff, "grad mode")],
)
def test_a_regulariser_that_changes_global_state_fails_only_its_own_cells(tmp_path, name, cls, needle):
    """Every plugin kind is a guest: the state is restored, its cells fail naming it, the others are unaffected."""
    REGULARISERS.add(name, cls, source="tests")
    try:
        doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
        doc["seeds"] = [0]
        doc["attacks"] = [{"name": "fgsm", "eps": [0.1]}]
        recipe = {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003, "snnl": {"alpha": 0.0}}
        doc["models"] = [
            {"name": "baseline", "architecture": "cnn-digits", "recipe": recipe},
            {"name": "sloppy", "architecture": "cnn-digits",
             "recipe": recipe | {"regularisers": [{"name": name, "weight": 0.1}]}},
        ]  # fmt: skip
        runner = _run(Suite.model_validate(doc), tmp_path, "guest", tmp_path / "cache")
    finally:
        REGULARISERS.unregister(name)
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    failures = pd.DataFrame(runner.failures)
    failed = failures[failures["status"] == "failed"]
    assert failed["cell"].tolist() == ["train sloppy seed=0"], failures
    error = failed["error"].iloc[0]
    assert needle in error and "regularisers" in error and "restored" in error
    # the baseline's own cells ran, its FGSM cell is not blamed, and its transfer cell ran on the targets that exist
    assert not failures["cell"].str.contains(r"baseline").any(), failures
    outcomes = runner.results.outcomes
    assert set(outcomes.loc[outcomes["source"] == "baseline", "target"]) == {"baseline"}
    clean = runner.results.clean
    assert clean.loc[clean["model"] == "baseline", "test_accuracy"].notna().all()
