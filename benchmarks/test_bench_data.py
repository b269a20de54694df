"""Loading all 70,000 Fashion-MNIST images into float tensors must take under 2 s on the CI machine.

Run with: pytest benchmarks/test_bench_data.py -m benchmark -p no:cacheprovider
"""

from __future__ import annotations

import pytest

from advbench.data import load_dataset, make_splits
from advbench.data.builtin import FASHION_MNIST_DEBIAN, IDX_FILES

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(
        not all((FASHION_MNIST_DEBIAN / f).is_file() for f in IDX_FILES),
        reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DEBIAN} (apt-get install dataset-fashion-mnist)",
    ),
]


def load_all() -> int:
    raw = load_dataset("fashion-mnist", data_dir=FASHION_MNIST_DEBIAN, download=False)
    splits = make_splits(raw, calibration=750, seed=0)
    return len(splits.train) + len(splits.calibration) + len(splits.test)


def test_load_full_fashion_mnist(benchmark, figure):
    n = benchmark.pedantic(load_all, rounds=5, iterations=1, warmup_rounds=1)
    assert n == 70_000
    median = benchmark.stats.stats.median
    ok = figure("load 70,000 Fashion-MNIST images (median)", median, unit="s", target=2.0, op="<")
    assert ok, f"loading Fashion-MNIST took {median:.2f} s (median), expected < 2 s"
