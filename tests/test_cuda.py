"""The CUDA path: a small suite on the GPU gives the CPU's results up to float tolerance.

Skipped where torch sees no GPU (the CI machines); run it on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from advbench.api import markdown_renderer
from advbench.config import Suite
from advbench.suite.context import RunOptions
from advbench.suite.runner import Runner

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


def _run(tmp: Path, device: str) -> Runner:
    doc = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    runner = Runner(
        Suite.model_validate(doc),
        source="tiny.yaml",
        options=RunOptions(
            runs_dir=str(tmp / f"runs-{device}"),
            cache_dir=str(tmp / f"cache-{device}"),
            report=str(tmp / f"{device}.md"),
            progress=False,
            device=device,
        ),
    )
    runner.run(render=markdown_renderer(runner.suite, runner.opt.report))
    return runner


def test_suite_on_cuda_matches_cpu_up_to_float_tolerance(tmp_path):
    cpu, gpu = _run(tmp_path, "cpu"), _run(tmp_path, "cuda")
    assert not cpu.failures and not gpu.failures
    assert all(next(m.parameters()).is_cuda for m in gpu.store.models.values())
    a = cpu.results.clean.sort_values(["model", "seed"]).reset_index(drop=True)
    b = gpu.results.clean.sort_values(["model", "seed"]).reset_index(drop=True)
    # the same initial weights and batch order; float differences only, so accuracies agree closely
    assert (a["test_accuracy"] - b["test_accuracy"]).abs().max() <= 0.03
    ma = cpu.results.metrics
    mb = gpu.results.metrics
    keys = ["seed", "source", "target", "attack", "eps", "metric"]
    joined = ma.merge(mb, on=keys, suffixes=("_cpu", "_gpu"))
    assert len(joined) == len(ma) == len(mb)
    assert (joined["value_cpu"] - joined["value_gpu"]).abs().max() <= 0.1
