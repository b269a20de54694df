"""advbench.suite.runner: whole runs that meet faulty and hostile plugins, a poisoned cache, no DkNN and a full
disk. Each ends cleanly, with the blame in the right place.

Six kinds of bad attack (raises, NaN, wrong shape, exceeds eps, modifies the weights, hangs past the time limit)
run in one small suite next to a good one; the good one's results must be exactly those of a run without the bad
ones, and every bad one must be in the report's "Failed cells" table; the run goes on unless ``--fail-fast``.
Hostile plugins (sys.exit, global state, hooks left behind, exceptions swallowed) fail their own cells only. An
attacker (or a buggy tool) with write access to the cache can replace a checkpoint's weights with a pickle payload
and rewrite every checksum to match: the run must never execute it, must quarantine the entry and recompute it,
and must end with the results of a clean run.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from advbench.analysis.results import Results
from advbench.api import markdown_renderer
from advbench.attacks import ATTACKS
from advbench.attacks.base import Attack, ThreatModel
from advbench.attacks.contract import AttackTimeoutError, descendant_processes
from advbench.config import Suite
from advbench.errors import ThreatModelError
from advbench.hashing import sha256_file
from advbench.io import DiskFullError
from advbench.suite.cache import MANIFEST
from advbench.suite.context import RunOptions
from advbench.suite.execute import CellTimeoutError
from advbench.suite.runner import RESULTS_KIND, Runner
from advbench.training.checkpoint import CARD_FILE, WEIGHTS_FILE, card_digest
from advbench.training.regularisers import REGULARISERS, Regulariser

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration  # full runs / forks: integration tier (still in the README's command)


# -- faulty attack plugins: reported by name, the run goes on ---------------------------------------------------


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


class _Exits(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        raise SystemExit(0)


class _ExitsInInit(Attack):
    def __init__(self) -> None:
        raise SystemExit("bye")

    def run(self, model, x, y, threat: ThreatModel, generator):
        return x.clone()


class _GradOffAttack(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        torch.set_grad_enabled(False)
        return x.clone()


class _LeavesHook(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        next(iter(model.modules())).register_forward_hook(lambda m, i, o: o * 0)
        return x.clone()


class _LeavesProcess(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        import subprocess

        subprocess.Popen(["sleep", "120"])  # started and forgotten
        return x.clone()


class _Swallows(Attack):
    def run(self, model, x, y, threat: ThreatModel, generator):
        for _ in range(3600):
            try:
                time.sleep(1)
            except BaseException:  # a hostile plugin swallows everything
                pass
        return x


HOSTILE = {
    "w17-exits": (_Exits, "sys.exit"),
    "w17-exits-in-init": (_ExitsInInit, "sys.exit"),
    "w17-grad-off": (_GradOffAttack, "grad mode"),
    "w17-leaves-hook": (_LeavesHook, "forward hooks"),
    "w17-leaves-process": (_LeavesProcess, "left 1 process(es) running (pid"),
}


@pytest.fixture(scope="module", autouse=True)
def bad_attacks():
    added = {**BAD, **HOSTILE, "w17-swallows": (_Swallows, "")}
    for name, (cls, _) in added.items():
        ATTACKS.add(name, cls, source="tests")
    yield
    for name in added:
        ATTACKS.unregister(name)


def _suite(**changes) -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    doc.update(changes)
    return Suite.model_validate(doc)


def _run(
    suite: Suite, tmp: Path, name: str, cache: Path, *, runs: Path | None = None, source: str | None = None, **opts
) -> Runner:
    """Run ``suite`` in this process from the suite file ``source`` (default ``NAME.yaml``), its run folder in
    ``runs`` (default ``tmp/runs-NAME``) and its report ``tmp/NAME.md``."""
    runner = Runner(
        suite,
        source=f"{name}.yaml" if source is None else source,
        options=RunOptions(
            runs_dir=str(tmp / f"runs-{name}" if runs is None else runs),
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
    clean = _run(_suite(attacks=good), tmp, "good", cache)
    bad = [{"name": name, "eps": [0.1]} for name in BAD]
    mixed = _run(_suite(attacks=bad[:3] + good + bad[3:]), tmp, "mixed", cache, time_limit=2.0)
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
    suite = _suite(attacks=[{"name": "fgsm", "eps": [0.1]}, {"name": "test-exceeds-eps", "eps": [0.1]}])
    with pytest.raises(ThreatModelError, match="eps"):
        _run(suite, tmp_path, "ff", tmp_path / "cache", fail_fast=True)


def test_hanging_attack_is_stopped_at_the_time_limit(tmp_path):
    suite = _suite(attacks=[{"name": "test-hangs", "eps": [0.1]}])
    t0 = time.perf_counter()
    with pytest.raises((AttackTimeoutError, CellTimeoutError), match="time limit of 1 s"):
        _run(suite, tmp_path, "hang", tmp_path / "cache", fail_fast=True, time_limit=1.0)
    assert time.perf_counter() - t0 < 120


# -- hostile plugins fail their own cells; runs without DkNN; a full disk -------------------------------------


def _run_here(suite: Suite, tmp: Path, name: str, **opts) -> Runner:
    """:func:`_run` with the run folder in ``tmp/runs`` and the cache in ``tmp/cache``."""
    return _run(suite, tmp, name, tmp / "cache", runs=tmp / "runs", **opts)


def _manifest(tmp: Path) -> dict:
    return json.loads(next((tmp / "runs").glob("*/manifest.json")).read_text())


# the forgetful plugin's own Popen object says, when it is collected, that its process was still running when
# the plugin dropped it (advbench killed it afterwards): the plugin's warning, expected here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_each_bad_plugin_fails_its_own_cell_and_later_cells_are_unaffected(tmp_path):
    # the bad ones run before the good one, in the same process, without a time limit
    attacks = [{"name": n, "eps": [0.1]} for n in HOSTILE] + [{"name": "fgsm", "eps": [0.1]}]
    mixed = _run_here(_suite(attacks=attacks), tmp_path / "mixed", "mixed")
    clean = _run_here(_suite(attacks=[{"name": "fgsm", "eps": [0.1]}]), tmp_path / "clean", "clean")
    failures = pd.DataFrame(mixed.failures)
    for name, (_, needle) in HOSTILE.items():
        rows = failures[(failures["kind"] == "attack") & failures["cell"].str.contains(f"attack {name} ")]
        assert len(rows) == 2 and (rows["status"] == "failed").all(), failures
        assert needle in rows["error"].iloc[0], rows["error"].iloc[0]
    assert not failures["cell"].str.contains("fgsm").any()
    assert torch.is_grad_enabled()
    assert descendant_processes() == {}  # the forgotten process was killed, not left behind
    m = _manifest(tmp_path / "mixed")
    assert m["status"] == "complete" and m["failed_cells"] == len(mixed.failures)
    assert (tmp_path / "mixed" / "mixed.md").is_file()
    a, b = clean.results.metrics, mixed.results.metrics
    pd.testing.assert_frame_equal(
        a.sort_values(list(a.columns)).reset_index(drop=True), b.sort_values(list(b.columns)).reset_index(drop=True)
    )


def test_a_plugin_that_swallows_every_exception_is_still_stopped(tmp_path):
    t0 = time.perf_counter()
    runner = _run_here(_suite(attacks=[{"name": "w17-swallows", "eps": [0.1]}]), tmp_path, "swallow", time_limit=2.0)
    assert time.perf_counter() - t0 < 120
    errors = [f["error"] for f in runner.failures if f["kind"] == "attack"]
    assert len(errors) == 2 and all("time limit of 2 s" in e for e in errors)
    assert _manifest(tmp_path)["status"] == "complete"


def test_a_suite_without_dknn_runs_end_to_end(tmp_path):
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    del doc["evaluations"]["dknn"]
    runner = _run_here(Suite.model_validate(doc | {"seeds": [0]}), tmp_path, "nodknn")
    assert not runner.failures and len(runner.results.metrics)
    assert _manifest(tmp_path)["status"] == "complete"
    assert "transfer" in (tmp_path / "nodknn.md").read_text().lower()


def test_a_full_disk_while_saving_results_never_marks_the_run_complete(tmp_path, monkeypatch):
    def full(self, folder):
        raise DiskFullError(f"no space left on the device holding {folder}", path=folder)

    monkeypatch.setattr(Results, "save", full)
    with pytest.raises(DiskFullError):
        _run_here(_suite(attacks=[{"name": "fgsm", "eps": [0.1]}]), tmp_path, "full")
    m = _manifest(tmp_path)
    assert m["status"] == "failed" and "DiskFullError" in m["error"]
    assert not (tmp_path / "full.md").exists()


# -- every plugin kind is a guest ------------------------------------------------------------------------


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


# -- a poisoned cache entry whose checksums all match: refused unexecuted and recomputed -----------------


def _run_tiny(tmp: Path, name: str) -> Runner:
    """The tiny suite with one seed and FGSM, from ``tiny.yaml``, its cache in ``tmp/cache``."""
    return _run(_suite(attacks=[{"name": "fgsm", "eps": [0.1]}]), tmp, name, tmp / "cache", source="tiny.yaml")


def _poison(entry: Path, marker: Path, payload: Callable[[Path], object]) -> None:
    """Swap the weights for a pickle (``payload(marker)``: conftest's pickle_payload) and make the card and the
    cache manifest agree with it."""
    ckpt = entry / "checkpoint"
    (ckpt / WEIGHTS_FILE).write_bytes(pickle.dumps(payload(marker)))
    card = json.loads((ckpt / CARD_FILE).read_text())
    card["weights_sha256"] = sha256_file(ckpt / WEIGHTS_FILE)
    card["card_sha256"] = card_digest(card)
    (ckpt / CARD_FILE).write_text(json.dumps(card))
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"] = {name: sha256_file(entry / name) for name in manifest["files"]}
    (entry / MANIFEST).write_text(json.dumps(manifest))


def test_poisoned_checkpoint_in_the_cache_is_refused_and_recomputed(tmp_path, pickle_payload):
    first = _run_tiny(tmp_path, "first")
    metrics = first.results.metrics
    train = first.ctx.cell("train", model="entangled", seed=0)
    entry = first.ctx.cache.path("train", train.key)
    marker = tmp_path / "pwned"
    _poison(entry, marker, pickle_payload)
    assert first.ctx.cache.get("train", train.key) is not None  # the cache's own checksums are satisfied

    # a re-run of the finished suite is a lookup of its results folder: no checkpoint is even read
    lookup = _run_tiny(tmp_path, "lookup")
    assert not marker.exists(), "the pickle payload was executed"
    assert not lookup.ctx.cache.corrupt_found and not lookup.failures
    # without that folder the cells are read back, and the poisoned one is refused and recomputed
    shutil.rmtree(first.ctx.cache.path(RESULTS_KIND, first.results_key()))
    second = _run_tiny(tmp_path, "second")
    assert not marker.exists(), "the pickle payload was executed"
    assert f"train/{train.key}" in second.ctx.cache.corrupt_found
    manifest = json.loads(next((tmp_path / "runs-second").glob("*/manifest.json")).read_text())
    assert manifest["cells"][train.label]["cached"] is False  # recomputed
    again = second.results.metrics
    pd.testing.assert_frame_equal(metrics, again, check_exact=True)
    assert not second.failures
