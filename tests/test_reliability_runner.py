"""A run meets hostile cache entries whose checksums all match: it refuses them unexecuted and recomputes.

An attacker (or a buggy tool) with write access to the cache can replace a checkpoint's weights
with a pickle payload and rewrite every checksum to match. The run must never execute it, must
quarantine the entry and recompute it, and must end with the results of a clean run.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from advbench.api import markdown_renderer
from advbench.config import Suite
from advbench.hashing import sha256_file
from advbench.suite.cache import MANIFEST
from advbench.suite.context import RunOptions
from advbench.suite.runner import RESULTS_KIND, Runner
from advbench.training.checkpoint import CARD_FILE, WEIGHTS_FILE, card_digest

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _suite() -> Suite:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    doc["seeds"] = [0]
    doc["attacks"] = [{"name": "fgsm", "eps": [0.1]}]
    return Suite.model_validate(doc)


pytestmark = pytest.mark.integration  # full runs: integration tier (still in the README's command)


def _run(tmp: Path, name: str) -> Runner:
    runner = Runner(
        _suite(),
        source="tiny.yaml",
        options=RunOptions(
            runs_dir=str(tmp / f"runs-{name}"),
            cache_dir=str(tmp / "cache"),
            report=str(tmp / f"{name}.md"),
            progress=False,
            threads=1,
        ),
    )
    runner.run(render=markdown_renderer(runner.suite, runner.opt.report))
    return runner


def _poison(entry: Path, marker: Path) -> None:
    """Swap the weights for a pickle and make the card and the cache manifest agree with it."""
    ckpt = entry / "checkpoint"
    (ckpt / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    card = json.loads((ckpt / CARD_FILE).read_text())
    card["weights_sha256"] = sha256_file(ckpt / WEIGHTS_FILE)
    card["card_sha256"] = card_digest(card)
    (ckpt / CARD_FILE).write_text(json.dumps(card))
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"] = {name: sha256_file(entry / name) for name in manifest["files"]}
    (entry / MANIFEST).write_text(json.dumps(manifest))


def test_poisoned_checkpoint_in_the_cache_is_refused_and_recomputed(tmp_path):
    first = _run(tmp_path, "first")
    metrics = first.results.metrics
    train = first.ctx.cell("train", model="entangled", seed=0)
    entry = first.ctx.cache.path("train", train.key)
    marker = tmp_path / "pwned"
    _poison(entry, marker)
    assert first.ctx.cache.get("train", train.key) is not None  # the cache's own checksums are satisfied

    # a re-run of the finished suite is a lookup of its results folder: no checkpoint is even read
    lookup = _run(tmp_path, "lookup")
    assert not marker.exists(), "the pickle payload was executed"
    assert not lookup.ctx.cache.corrupt_found and not lookup.failures
    # without that folder the cells are read back, and the poisoned one is refused and recomputed
    shutil.rmtree(first.ctx.cache.path(RESULTS_KIND, first.results_key()))
    second = _run(tmp_path, "second")
    assert not marker.exists(), "the pickle payload was executed"
    assert f"train/{train.key}" in second.ctx.cache.corrupt_found
    manifest = json.loads(next((tmp_path / "runs-second").glob("*/manifest.json")).read_text())
    assert manifest["cells"][train.label]["cached"] is False  # recomputed
    again = second.results.metrics
    pd.testing.assert_frame_equal(metrics, again, check_exact=True)
    assert not second.failures
